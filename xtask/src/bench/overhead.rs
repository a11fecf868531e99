//! Section 2, churn overhead: the rate of a tight loopback
//! connect/accept/close loop and of a tight getppid() loop, alternating
//! without and with cwatch (and, for the syscall-entry tax, without and with
//! a no-op `syscalls:sys_enter_close` program). The order flips every round
//! (ABBA) so slow drifts of the shared machine cancel; each round gives one
//! ratio, and the median ratio is reported with its spread.
use std::time::Duration;

use super::{Plan, daemon::BenchDaemon, procs, stats::Samples};

/// With/without rates of one workload, one pair per round.
#[derive(Debug, Default)]
pub struct Paired {
    pub without: Samples,
    pub with: Samples,
    /// with / without, per round.
    pub ratios: Samples,
}

impl Paired {
    fn add(&mut self, without: f64, with: f64) {
        self.without.push(without);
        self.with.push(with);
        self.ratios.push(with / without);
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
    let churn = || procs::run_rate(&bins.churn, &["--seconds", &secs]);
    let getppid = || procs::run_rate(&bins.getppid, &["--seconds", &secs]);

    // The syscall-entry tax first: its number is wanted early.
    for round in 0..plan.rounds {
        let mut rates = [0.0; 2];
        for with in order(round) {
            let _probe = if with {
                Some(procs::bpftrace(NOOP_CLOSE)?)
            } else {
                None
            };
            rates[usize::from(with)] = getppid()?;
        }
        out.getppid_close_tp.add(rates[0], rates[1]);
        eprintln!(
            "bench: round {round}: getppid {:.0}/s, with no-op sys_enter_close {:.0}/s",
            rates[0], rates[1]
        );
    }

    for round in 0..plan.rounds {
        let mut churn_rates = [0.0; 2];
        let mut getppid_rates = [0.0; 2];
        for with in order(round) {
            let daemon = if with {
                Some(BenchDaemon::start(&bins.cwatch, &[])?)
            } else {
                None
            };
            churn_rates[usize::from(with)] = churn()?;
            getppid_rates[usize::from(with)] = getppid()?;
            if let Some(daemon) = daemon {
                daemon.stop()?;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        out.churn.add(churn_rates[0], churn_rates[1]);
        out.getppid.add(getppid_rates[0], getppid_rates[1]);
        eprintln!(
            "bench: round {round}: churn {:.0} -> {:.0} conn/s, getppid {:.0} -> {:.0} calls/s (without -> with cwatch)",
            churn_rates[0], churn_rates[1], getppid_rates[0], getppid_rates[1]
        );
    }
    Ok(out)
}

/// Without first on even rounds, with first on odd ones.
fn order(round: usize) -> [bool; 2] {
    if round % 2 == 0 {
        [false, true]
    } else {
        [true, false]
    }
}
