//! Section 2, churn overhead: the rate of a tight loopback
//! connect/accept/close loop and of a tight getppid() loop, alternating
//! without and with cwatch (and, for the syscall-entry tax, without and with
//! a no-op `syscalls:sys_enter_close` program). The order flips every round
//! (ABBA) so slow drifts of the shared machine cancel; each round gives one
//! ratio, and the median ratio is reported with its spread.
use std::time::Duration;

use super::{
    Plan,
    daemon::BenchDaemon,
    procs::{self, Run},
    stats::Samples,
    system,
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
}

impl Paired {
    fn add(&mut self, runs: [Run; 2]) {
        let [without, with] = runs;
        self.without.push(without.rate);
        self.with.push(with.rate);
        self.ratios.push(with.rate / without.rate);
        self.cpu_without.push(without.cpu_ns);
        self.cpu_with.push(with.cpu_ns);
        self.cpu_ratios.push(with.cpu_ns / without.cpu_ns);
    }

    /// Median extra CPU per operation in percent.
    pub fn cpu_extra_pct(&self) -> f64 {
        (self.cpu_ratios.median() - 1.0) * 100.0
    }

    /// Median loss in percent (positive = slower with the probe).
    pub fn loss_pct(&self) -> f64 {
        (1.0 - self.ratios.median()) * 100.0
    }
}

#[derive(Debug, Default)]
pub struct Overhead {
    pub churn: Paired,
    pub getppid: Paired,
    /// getppid() with a no-op program on syscalls:sys_enter_close.
    pub getppid_close_tp: Paired,
}

/// The no-op program whose attachment alone is measured.
pub const NOOP_CLOSE: &str = "tracepoint:syscalls:sys_enter_close { }";

pub fn run(plan: &Plan, bins: &procs::Bins) -> anyhow::Result<Overhead> {
    let mut out = Overhead::default();
    let secs = format!("{}", plan.workload_secs);
    let churn = || procs::run_gen(&bins.churn, &["--seconds", &secs]);
    let getppid = || procs::run_gen(&bins.getppid, &["--seconds", &secs]);
    let none = Run {
        rate: f64::NAN,
        cpu_ns: f64::NAN,
        ops: f64::NAN,
    };

    // The syscall-entry tax first: its number is wanted early.
    for round in 0..plan.rounds {
        let mut runs = [none; 2];
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
        out.getppid_close_tp.add(runs);
    }

    for round in 0..plan.rounds {
        let mut churn_runs = [none; 2];
        let mut getppid_runs = [none; 2];
        for with in order(round) {
            let daemon = if with {
                Some(BenchDaemon::start(&bins.cwatch, &[])?)
            } else {
                None
            };
            let cpu0 = match &daemon {
                Some(d) => system::cpu_seconds(d.pid)?,
                None => 0.0,
            };
            churn_runs[usize::from(with)] = churn()?;
            if let Some(d) = &daemon {
                let used = system::cpu_seconds(d.pid)? - cpu0;
                out.churn
                    .daemon_cpu_pct
                    .push(used / plan.workload_secs * 100.0);
            }
            getppid_runs[usize::from(with)] = getppid()?;
            if let Some(daemon) = daemon {
                daemon.stop()?;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "bench: round {round}: churn {:.0} -> {:.0} conn/s ({:.0} -> {:.0} CPU ns/conn), getppid {:.0} -> {:.0} calls/s ({:.1} -> {:.1} ns) (without -> with cwatch)",
            churn_runs[0].rate,
            churn_runs[1].rate,
            churn_runs[0].cpu_ns,
            churn_runs[1].cpu_ns,
            getppid_runs[0].rate,
            getppid_runs[1].rate,
            getppid_runs[0].cpu_ns,
            getppid_runs[1].cpu_ns
        );
        out.churn.add(churn_runs);
        out.getppid.add(getppid_runs);
    }
    Ok(out)
}

/// Without first on even rounds, with first on odd ones.
fn order(round: usize) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}
