//! `cargo xtask bench`: cwatch's cost and scale, measured side by side with
//! the tools it replaces, in one run on this machine. Writes a markdown
//! table (`RESULTS.md`, with machine and kernel) and a PNG chart of cost
//! against socket count. `--quick` runs every section at small sizes in
//! under a minute (CI runs it so the harness never rots) and writes under
//! `target/bench-quick/` instead of `bench/`.
//!
//! One file per concern: `overhead` (churn and syscall tax, alternating
//! without/with), `cost` (ns per program run), `scale` with `holders`
//! (CLOSE_WAIT sockets by the hundred thousand), `latency` (transition to
//! gauge), `report` and `chart` (the outputs), `system` (sysctls, /proc),
//! `procs` (the processes it starts), `stats` (medians and spread).
mod chart;
mod cost;
mod daemon;
mod holders;
mod idle;
mod latency;
mod overhead;
mod procs;
mod report;
mod scale;
mod stats;
mod system;

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Small sizes, few rounds, under a minute: checks the harness works.
    #[arg(long)]
    pub quick: bool,
    /// Where to write RESULTS.md and the chart [default: bench/, or
    /// target/bench-quick/ with --quick].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Sizes and repetitions of one run.
pub struct Plan {
    pub quick: bool,
    /// Length of one generator run (seconds).
    pub workload_secs: f64,
    /// Without/with alternations.
    pub rounds: usize,
    /// CLOSE_WAIT socket counts for the scale section.
    pub levels: Vec<usize>,
    /// /metrics scrapes per level (and node_exporter scrapes).
    pub scrapes: usize,
    /// With `--quick`, the idle window for the daemon's CPU use (seconds);
    /// a full run measures the background and a full pass (`idle`).
    pub idle_secs: u64,
    /// Detection latency trials.
    pub latency_trials: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                workload_secs: 0.5,
                rounds: 2,
                levels: vec![2_000],
                scrapes: 5,
                idle_secs: 2,
                latency_trials: 3,
            }
        } else {
            Plan {
                quick,
                workload_secs: 2.0,
                rounds: 10,
                levels: vec![10_000, 50_000, 200_000, 1_000_000],
                scrapes: 30,
                idle_secs: 0,
                latency_trials: 20,
            }
        }
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    if !util::is_root() {
        bail!("the bench loads eBPF programs and sets sysctls: run it as root");
    }
    setup::ensure_build_toolchain(false)?;
    setup::ensure_bench_tools(false)?;
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
    let bins = procs::Bins::in_dir(&util::target_dir().join("release"));
    let plan = Plan::new(opts.quick);
    let out_dir = opts.out.clone().unwrap_or_else(|| {
        if opts.quick {
            util::target_dir().join("bench-quick")
        } else {
            util::workspace_root().join("bench")
        }
    });
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let machine = system::machine();
    eprintln!("bench: == churn overhead and syscall tax");
    let overhead = overhead::run(&plan, &bins)?;
    eprintln!("bench: == kernel cost per event");
    let cost = cost::run(&plan, &bins)?;
    eprintln!("bench: == detection latency");
    let latency = latency::run(&plan, &bins)?;
    eprintln!("bench: == scale");
    let scale = scale::run(&plan, &bins)?;
    let results = report::Results {
        machine,
        quick: plan.quick,
        overhead,
        cost,
        latency,
        scale,
        elapsed: started.elapsed(),
        load_at_end: system::load_average(),
    };
    let md = out_dir.join("RESULTS.md");
    std::fs::write(&md, report::render(&results))
        .with_context(|| format!("writing {}", md.display()))?;
    let png = out_dir.join("scale.png");
    chart::draw(&results.scale, &png)?;
    eprintln!(
        "bench: wrote {} and {} in {:.0?}",
        md.display(),
        png.display(),
        started.elapsed()
    );
    Ok(())
}
