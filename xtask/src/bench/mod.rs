//! `cargo xtask bench`: cwatch's cost and scale, measured side by side with
//! the tools it replaces, in one run on this machine. Writes a markdown
//! report (`RESULTS.md`, with machine and kernel, every target with the
//! previous run's figure beside it), the figures as `results.json` for the
//! next run's before column, and PNG charts (cost against socket count, the
//! soak's memory). `--quick` runs every section at small sizes in a few
//! minutes (CI runs it so the harness never rots) and writes under
//! `target/bench-quick/` instead of `bench/`; `--only` runs some sections
//! and writes under `target/bench-partial/`.
//!
//! One file per section: `overhead` (churn and syscall tax, alternating
//! without/with), `cost` (ns per program run), `quiet` (a daemon left
//! alone), `latency` (transition to gauge), `attribution` (owners of
//! thousands of processes' sockets), `scale` with `holders` and `idle`
//! (CLOSE_WAIT sockets by the hundred thousand), `soak` (a long run under
//! churn and a growing leak). Then the outputs: `targets`, `results`,
//! `report`, `chart`; and what they stand on: `daemon`, `procs`, `system`,
//! `cpu`, `stats`, `cleanup` (undoing what a run changed, however it ends).
//! Loopback is kept out of connection tracking for the run
//! ([`crate::conntrack`]).
mod attribution;
mod chart;
mod cleanup;
mod cost;
mod cpu;
mod daemon;
mod holders;
mod idle;
mod latency;
mod overhead;
mod procs;
mod quiet;
mod report;
mod results;
mod scale;
mod soak;
mod stats;
mod system;
mod targets;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{conntrack, setup, util};

/// The sections, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Overhead,
    Cost,
    Quiet,
    Latency,
    Attribution,
    Scale,
    Soak,
}

#[derive(clap::Args)]
pub struct Options {
    /// Small sizes, few rounds, a few minutes: checks the harness works.
    #[arg(long)]
    pub quick: bool,
    /// Where to write RESULTS.md, results.json and the charts [default:
    /// bench/; target/bench-quick/ with --quick; target/bench-partial/ with
    /// --only].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The previous run's results.json, for the before column [default:
    /// results.json in the output directory].
    #[arg(long, value_name = "FILE")]
    pub before: Option<PathBuf>,
    /// Length of the soak in seconds; 0 leaves it out [default: 600, or 10
    /// with --quick].
    #[arg(long, value_name = "SECS")]
    pub soak: Option<u64>,
    /// Run only these sections (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
}

/// Sizes and repetitions of one run.
pub struct Plan {
    pub quick: bool,
    /// Length of one generator run (seconds).
    pub workload_secs: f64,
    /// Without/with alternations of the default churn and getppid().
    pub rounds: usize,
    /// Without/with alternations of each other churn shape.
    pub shape_rounds: usize,
    /// Rounds of the kernel cost section (every shape in each).
    pub cost_rounds: usize,
    /// The quiet host's window (seconds).
    pub quiet_secs: u64,
    /// CLOSE_WAIT socket counts for the scale section.
    pub levels: Vec<usize>,
    /// /metrics scrapes per level (and node_exporter scrapes).
    pub scrapes: usize,
    /// With `--quick`, the idle window for the daemon's CPU use (seconds);
    /// a full run measures the background and a full pass (`idle`).
    pub idle_secs: u64,
    /// Detection latency trials.
    pub latency_trials: usize,
    /// Processes holding sockets in the attribution section.
    pub attribution_processes: usize,
    /// The soak's length (seconds; 0: none).
    pub soak_secs: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                workload_secs: 0.5,
                rounds: 2,
                shape_rounds: 2,
                cost_rounds: 2,
                quiet_secs: 5,
                levels: vec![2_000],
                scrapes: 5,
                idle_secs: 2,
                latency_trials: 3,
                attribution_processes: 40,
                soak_secs: 10,
            }
        } else {
            Plan {
                quick,
                workload_secs: 2.0,
                rounds: 10,
                shape_rounds: 6,
                cost_rounds: 5,
                quiet_secs: 60,
                levels: vec![10_000, 50_000, 200_000, 1_000_000],
                scrapes: 30,
                idle_secs: 0,
                latency_trials: 20,
                attribution_processes: 2_000,
                soak_secs: 600,
            }
        }
    }
}

/// Runs `f` as section `what` if it is selected, timing it.
fn section<T>(
    opts: &Options,
    which: Section,
    what: &'static str,
    timings: &mut Vec<(&'static str, Duration)>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    if !opts.only.is_empty() && !opts.only.contains(&which) {
        return Ok(None);
    }
    eprintln!("bench: == {what}");
    let started = Instant::now();
    let out = f().with_context(|| format!("bench section: {what}"))?;
    timings.push((what, started.elapsed()));
    Ok(Some(out))
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    if !util::is_root() {
        bail!("the bench loads eBPF programs and sets sysctls: run it as root");
    }
    cleanup::install()?;
    setup::ensure_build_toolchain(false)?;
    setup::ensure_bench_tools(false)?;
    let mut t = Vec::new();
    let build_started = Instant::now();
    util::run(util::cargo().args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "cwatch-daemon",
        "--bin",
        "cwatch",
        "--package",
        "cwatch-testkit",
        "--bins",
    ]))?;
    t.push(("build (release)", build_started.elapsed()));
    let bins = procs::Bins::in_dir(&util::target_dir().join("release"));
    let mut plan = Plan::new(opts.quick);
    if let Some(secs) = opts.soak {
        plan.soak_secs = secs;
    }
    let out_dir = opts.out.clone().unwrap_or_else(|| {
        if opts.quick {
            util::target_dir().join("bench-quick")
        } else if !opts.only.is_empty() {
            util::target_dir().join("bench-partial")
        } else {
            util::workspace_root().join("bench")
        }
    });
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let before_path = opts
        .before
        .clone()
        .unwrap_or_else(|| out_dir.join("results.json"));
    let before = results::read(&before_path);

    let mut machine = system::machine();
    let untracked = conntrack::untrack_loopback()?;
    if untracked.is_some() {
        machine.push((
            "conntrack".into(),
            "active on this host; loopback packets untracked during the run".into(),
        ));
    }
    if system::ensure_tracefs()? {
        machine.push((
            "tracefs".into(),
            "not mounted at start; mounted at /sys/kernel/tracing for bpftrace".into(),
        ));
    }
    let overhead = section(opts, Section::Overhead, "churn overhead", &mut t, || {
        overhead::run(&plan, &bins)
    })?;
    let cost = section(opts, Section::Cost, "kernel cost per event", &mut t, || {
        cost::run(&plan, &bins)
    })?;
    let quiet = section(opts, Section::Quiet, "a quiet host", &mut t, || {
        quiet::run(&plan, &bins)
    })?;
    let latency = section(opts, Section::Latency, "detection latency", &mut t, || {
        latency::run(&plan, &bins)
    })?;
    let attribution = section(opts, Section::Attribution, "attribution", &mut t, || {
        attribution::run(&plan, &bins)
    })?;
    let scale = section(opts, Section::Scale, "scale", &mut t, || {
        scale::run(&plan, &bins)
    })?;
    let soak = match plan.soak_secs {
        0 => None,
        secs => section(opts, Section::Soak, "soak", &mut t, || {
            soak::run(secs, &bins)
        })?
        .map(|o| (secs, o)),
    };
    let mut command = String::from("cargo xtask bench");
    for arg in std::env::args().skip_while(|a| a != "bench").skip(1) {
        command.push(' ');
        command.push_str(&arg);
    }
    let r = report::Results {
        machine,
        command: command.clone(),
        overhead,
        cost,
        quiet,
        latency,
        attribution,
        scale,
        soak,
        timings: t,
        elapsed: started.elapsed(),
        load_at_end: system::load_average(),
        date: report::date(),
    };
    let now = results::ResultsFile {
        written_by: command,
        date: r.date.clone(),
        commit: results::commit(),
        elapsed_s: r.elapsed.as_secs_f64(),
        figures: targets::figures(&r),
    };
    write_outputs(&out_dir, &r, before.as_ref(), &now)?;
    eprintln!(
        "bench: wrote {} in {:.0?}",
        out_dir.display(),
        started.elapsed()
    );
    Ok(())
}

fn write_outputs(
    dir: &Path,
    r: &report::Results,
    before: Option<&results::ResultsFile>,
    now: &results::ResultsFile,
) -> anyhow::Result<()> {
    let md = dir.join("RESULTS.md");
    std::fs::write(&md, report::render(r, before, now))
        .with_context(|| format!("writing {}", md.display()))?;
    results::write(&dir.join("results.json"), now)?;
    if let Some(scale) = &r.scale {
        chart::draw(scale, &dir.join("scale.png"))?;
    }
    if let Some((_, soak)) = &r.soak {
        chart::draw_soak(&soak.samples, &dir.join("soak.png"))?;
    }
    Ok(())
}
