//! Churn overhead: the rate of a tight loopback connect/accept/close loop
//! and of a tight getppid() loop, alternating without and with cwatch — and,
//! on the default churn, with the bpftrace one-liner, with empty bpftrace
//! programs on cwatch's two tracepoints and with empty programs attached as
//! cwatch's are (`cwatch-floor`: the floor) too; for the syscall-entry tax,
//! without and with a no-op `syscalls:sys_enter_close` program. The order
//! flips every round (ABBA; with five conditions, ABCDE then EDCBA) so slow
//! drifts of the shared machine cancel; each round gives
//! one ratio, and the median ratio is reported with its spread. The other
//! churn shapes (`churn`) run without/with cwatch the same way.
use std::{fmt::Write as _, time::Duration};

use cwatch_testkit::churn::{self, Churn};

use super::{
    Plan,
    cost::{BPFTRACE_EMPTY, BPFTRACE_ONE_LINER},
    cpu::CpuMeter,
    daemon::BenchDaemon,
    procs::{self, Run},
    stats::Samples,
};

/// With/without figures of one workload, one pair per round.
#[derive(Debug, Default)]
pub struct Paired {
    /// Operations per second.
    pub without: Samples,
    pub with: Samples,
    /// with / without rate, per round.
    pub ratios: Samples,
    /// The generator's CPU ns per operation.
    pub cpu_without: Samples,
    pub cpu_with: Samples,
    /// with / without CPU per operation, per round.
    pub cpu_ratios: Samples,
    /// The daemon's CPU time while the workload ran, % of one core.
    pub daemon_cpu_pct: Samples,
    /// with (the generator's and the daemon's CPU per operation) / without,
    /// per round.
    pub host_cpu_ratios: Samples,
}

impl Paired {
    /// One round; `daemon_ns`: the daemon's CPU time during the with run.
    fn add(&mut self, runs: [Run; 2], daemon_ns: Option<f64>) {
        let [without, with] = runs;
        self.without.push(without.rate);
        self.with.push(with.rate);
        self.ratios.push(with.rate / without.rate);
        self.cpu_without.push(without.cpu_ns);
        self.cpu_with.push(with.cpu_ns);
        self.cpu_ratios.push(with.cpu_ns / without.cpu_ns);
        if let Some(ns) = daemon_ns {
            let secs = with.ops / with.rate;
            self.daemon_cpu_pct.push(ns / 1e9 / secs * 100.0);
            let host = with.cpu_ns + ns / with.ops.max(1.0);
            self.host_cpu_ratios.push(host / without.cpu_ns);
        }
    }

    /// Median extra CPU per operation in percent (the generator's own).
    pub fn cpu_extra_pct(&self) -> f64 {
        (self.cpu_ratios.median() - 1.0) * 100.0
    }

    /// Median extra CPU per operation in percent, the daemon's included.
    pub fn host_cpu_extra_pct(&self) -> f64 {
        (self.host_cpu_ratios.median() - 1.0) * 100.0
    }

    /// Median loss in percent (positive = slower with the probe).
    pub fn loss_pct(&self) -> f64 {
        (1.0 - self.ratios.median()) * 100.0
    }
}

#[derive(Debug, Default)]
pub struct Overhead {
    /// The default churn, cwatch.
    pub churn: Paired,
    /// The default churn, the bpftrace one-liner (same rounds).
    pub churn_bpftrace: Paired,
    /// The default churn, empty programs on the tracepoints cwatch uses
    /// (same rounds): what any program there costs.
    pub churn_empty: Paired,
    /// The default churn, empty programs attached as cwatch's are
    /// (`cwatch-floor`, same rounds): the floor of cwatch's own kind.
    pub churn_floor: Paired,
    pub getppid: Paired,
    /// getppid() with a no-op program on syscalls:sys_enter_close.
    pub getppid_close_tp: Paired,
    /// The other churn shapes, cwatch.
    pub variants: Vec<(Churn, Paired)>,
}

/// The no-op program whose attachment alone is measured.
pub const NOOP_CLOSE: &str = "tracepoint:syscalls:sys_enter_close { }";

/// What runs beside the default churn in one of its runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Beside {
    Nothing,
    Cwatch,
    OneLiner,
    Empty,
    Floor,
}

const NONE: Run = Run {
    rate: f64::NAN,
    cpu_ns: f64::NAN,
    ops: f64::NAN,
};

pub fn run(plan: &Plan, bins: &procs::Bins) -> anyhow::Result<Overhead> {
    let mut out = Overhead::default();
    let secs = plan.workload_secs;
    let getppid = || procs::run_gen(&bins.getppid, &["--seconds", &format!("{secs}")]);

    // The syscall-entry tax first: its number is wanted early.
    for round in 0..plan.rounds {
        let mut runs = [NONE; 2];
        for with in order(round) {
            let _probe = if with {
                Some(procs::bpftrace(NOOP_CLOSE)?)
            } else {
                None
            };
            runs[usize::from(with)] = getppid()?;
        }
        eprintln!(
            "bench: round {round}: getppid {:.0}/s {:.1} ns, with no-op sys_enter_close {:.0}/s {:.1} ns",
            runs[0].rate, runs[0].cpu_ns, runs[1].rate, runs[1].cpu_ns
        );
        out.getppid_close_tp.add(runs, None);
    }

    for round in 0..plan.rounds {
        let mut churn_runs = [NONE; 5];
        let mut getppid_runs = [NONE; 2];
        let mut daemon_ns = None;
        let mut five = [
            Beside::Nothing,
            Beside::Cwatch,
            Beside::OneLiner,
            Beside::Empty,
            Beside::Floor,
        ];
        if round % 2 == 1 {
            five.reverse();
        }
        for beside in five {
            let i = beside as usize;
            match beside {
                Beside::OneLiner | Beside::Empty => {
                    let program = if beside == Beside::Empty {
                        BPFTRACE_EMPTY
                    } else {
                        BPFTRACE_ONE_LINER
                    };
                    let _probe = procs::bpftrace(program)?;
                    churn_runs[i] = procs::churn(&bins.churn, churn::CLIENT, secs)?;
                }
                Beside::Floor => {
                    let _probe = procs::floor(&bins.floor)?;
                    churn_runs[i] = procs::churn(&bins.churn, churn::CLIENT, secs)?;
                }
                Beside::Cwatch => {
                    let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
                    daemon.settle()?;
                    let mut cpu = CpuMeter::start(daemon.pid)?;
                    churn_runs[i] = procs::churn(&bins.churn, churn::CLIENT, secs)?;
                    cpu.sample()?;
                    daemon_ns = Some(cpu.used_ns() as f64);
                    getppid_runs[1] = getppid()?;
                    daemon.stop()?;
                }
                Beside::Nothing => {
                    churn_runs[i] = procs::churn(&bins.churn, churn::CLIENT, secs)?;
                    getppid_runs[0] = getppid()?;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let [none, cwatch, one_liner, empty, floor] = churn_runs;
        eprintln!(
            "bench: round {round}: churn {:.0} conn/s {:.0} CPU ns/conn; with cwatch {:.0}, {:.0}; with the one-liner {:.0}, {:.0}; with empty programs {:.0}, {:.0}; with cwatch-floor {:.0}, {:.0}; getppid {:.0} -> {:.0} calls/s",
            none.rate,
            none.cpu_ns,
            cwatch.rate,
            cwatch.cpu_ns,
            one_liner.rate,
            one_liner.cpu_ns,
            empty.rate,
            empty.cpu_ns,
            floor.rate,
            floor.cpu_ns,
            getppid_runs[0].rate,
            getppid_runs[1].rate,
        );
        out.churn.add([none, cwatch], daemon_ns);
        out.churn_bpftrace.add([none, one_liner], None);
        out.churn_empty.add([none, empty], None);
        out.churn_floor.add([none, floor], None);
        out.getppid.add(getppid_runs, None);
    }

    for shape in churn::ALL.into_iter().filter(|c| *c != churn::CLIENT) {
        out.variants.push((shape, shape_rounds(plan, bins, shape)?));
    }
    Ok(out)
}

/// Without/with cwatch rounds of one churn shape.
fn shape_rounds(plan: &Plan, bins: &procs::Bins, shape: Churn) -> anyhow::Result<Paired> {
    let mut paired = Paired::default();
    for round in 0..plan.shape_rounds {
        let mut runs = [NONE; 2];
        let mut daemon_ns = None;
        for with in order(round) {
            if with {
                let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
                daemon.settle()?;
                let mut cpu = CpuMeter::start(daemon.pid)?;
                runs[1] = procs::churn(&bins.churn, shape, plan.workload_secs)?;
                cpu.sample()?;
                daemon_ns = Some(cpu.used_ns() as f64);
                daemon.stop()?;
            } else {
                runs[0] = procs::churn(&bins.churn, shape, plan.workload_secs)?;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "bench: round {round}: churn {} {:.0} -> {:.0} conn/s ({:.0} -> {:.0} CPU ns/conn) (without -> with cwatch)",
            shape.name, runs[0].rate, runs[1].rate, runs[0].cpu_ns, runs[1].cpu_ns
        );
        paired.add(runs, daemon_ns);
    }
    Ok(paired)
}

/// Without first on even rounds, with first on odd ones.
fn order(round: usize) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

/// The section of RESULTS.md.
pub fn render(o: &Overhead, s: &mut String) {
    let _ = writeln!(
        s,
        "Without and with, alternating (order flipped every round: ABBA, and for the \
         default churn's five conditions ABCDE then EDCBA), {} rounds ({} for the other \
         shapes); ratio = with / without per round. The rate is the target's measure; the \
         generator's own CPU time per operation (user + system, from \
         CLOCK_PROCESS_CPUTIME_ID) hardly depends on what else runs on the machine, so it \
         shows the same tax with less noise (softirq work the kernel does not charge to the \
         process is not in it). \"Host CPU/op\" adds the daemon's CPU time during the run, \
         per connection. The one-liner is `{BPFTRACE_ONE_LINER}`; the empty programs \
         `{BPFTRACE_EMPTY}` are what any program on those two tracepoints costs as bpftrace \
         attaches it (`tracepoint` programs: the call goes through perf's buffer first); \
         `cwatch-floor`'s empty programs (`r0 = 0; exit`) are attached as cwatch's `tp_btf` \
         programs are run, through the raw tracepoint call: the floor of cwatch's own kind. \
         Each daemon is started \
         fresh for its run, after its start-up work is over.\n\n\
         | workload | without (median) | with (median) | loss (median) | rate ratio min–max | CPU/op without → with | extra CPU/op (median) | CPU ratio min–max | extra host CPU/op |\n|---|---|---|---|---|---|---|---|---|",
        o.churn.ratios.len(),
        o.variants.first().map_or(0, |(_, p)| p.ratios.len()),
    );
    let mut rows: Vec<(String, &Paired, &str)> = vec![
        (
            format!("churn {}, cwatch", churn::CLIENT.what),
            &o.churn,
            "conn/s",
        ),
        (
            "the same churn, the bpftrace one-liner".into(),
            &o.churn_bpftrace,
            "conn/s",
        ),
        (
            "the same churn, empty programs on the same two tracepoints (bpftrace)".into(),
            &o.churn_empty,
            "conn/s",
        ),
        (
            "the same churn, empty programs attached as cwatch's (`cwatch-floor`: the floor)"
                .into(),
            &o.churn_floor,
            "conn/s",
        ),
    ];
    for (shape, p) in &o.variants {
        rows.push((format!("churn {}, cwatch", shape.what), p, "conn/s"));
    }
    rows.push(("getppid() loop, cwatch".into(), &o.getppid, "calls/s"));
    rows.push((
        "getppid() loop, no-op `syscalls:sys_enter_close` program (bpftrace)".into(),
        &o.getppid_close_tp,
        "calls/s",
    ));
    for (what, p, unit) in rows {
        let host = if p.host_cpu_ratios.is_empty() {
            "—".to_string()
        } else {
            format!("{:+.2} %", p.host_cpu_extra_pct())
        };
        let _ = writeln!(
            s,
            "| {what} | {:.0} {unit} | {:.0} {unit} | {:.2} % | {:.3}–{:.3} | {:.1} → {:.1} ns | {:+.2} % | {:.3}–{:.3} | {host} |",
            p.without.median(),
            p.with.median(),
            p.loss_pct(),
            p.ratios.min(),
            p.ratios.max(),
            p.cpu_without.median(),
            p.cpu_with.median(),
            p.cpu_extra_pct(),
            p.cpu_ratios.min(),
            p.cpu_ratios.max()
        );
    }
    let d = &o.churn.daemon_cpu_pct;
    let _ = writeln!(
        s,
        "\nThe daemon itself used {:.2} % of a core (median; {:.2}–{:.2} %) while the default \
         churn ran with it: on a 2-CPU machine that CPU is taken from everything else.\n\n\
         Per-round rates and CPU times of the default churn:\n\n\
         | round | without | cwatch | the one-liner | empty programs | `cwatch-floor` | getppid calls/s without → with |\n|---|---|---|---|---|---|---|",
        d.median(),
        d.min(),
        d.max()
    );
    let at = |v: &Samples, i: usize| v.0.get(i).copied().unwrap_or(f64::NAN);
    for i in 0..o.churn.without.len() {
        let _ = writeln!(
            s,
            "| {i} | {:.0} conn/s, {:.0} ns | {:.0}, {:.0} ns | {:.0}, {:.0} ns | {:.0}, {:.0} ns | {:.0}, {:.0} ns | {:.0} → {:.0} |",
            at(&o.churn.without, i),
            at(&o.churn.cpu_without, i),
            at(&o.churn.with, i),
            at(&o.churn.cpu_with, i),
            at(&o.churn_bpftrace.with, i),
            at(&o.churn_bpftrace.cpu_with, i),
            at(&o.churn_empty.with, i),
            at(&o.churn_empty.cpu_with, i),
            at(&o.churn_floor.with, i),
            at(&o.churn_floor.cpu_with, i),
            at(&o.getppid.without, i),
            at(&o.getppid.with, i),
        );
    }
}
