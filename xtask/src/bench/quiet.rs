//! A quiet host: a daemon with none of the bench's sockets in CLOSE_WAIT
//! anywhere, measured between scrapes — started, ready, settled (the
//! start-up reconciliation and its walk of /proc over), then left alone for
//! the window: no request reaches it, so what it uses is what it does on its
//! own (timers, wake-ups for other processes' sockets on this shared
//! machine, which the section counts). CPU time to the nanosecond
//! (`cpu::CpuMeter`), sampled every half second; resident memory at the end.
//! Then the cost of one scrape, on its own, for scale.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use cwatch_testkit::prom::Scrape;

use super::{Plan, cpu::CpuMeter, daemon::BenchDaemon, procs::Bins, system};

#[derive(Debug, Default)]
pub struct Quiet {
    pub window_s: f64,
    /// The daemon's CPU over the window, % of one core.
    pub cpu_pct: f64,
    /// The same from /proc/PID/stat's clock ticks (10 ms each), as a check.
    pub cpu_pct_ticks: f64,
    pub rss_mib: f64,
    /// CPU ms of one /metrics scrape (median of several, back to back).
    pub scrape_cpu_ms: f64,
    /// CLOSE_WAIT transitions on the host during the window (other
    /// processes' sockets: the machine is shared).
    pub host_transitions: f64,
    /// CLOSE_WAIT sockets on the host (`ss`) at the start of the window.
    pub host_close_wait: usize,
}

pub fn run(plan: &Plan, bins: &Bins) -> anyhow::Result<Quiet> {
    let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
    daemon.settle()?;
    // A moment more: timers armed at start (the first holders refresh, the
    // young scanner's first look) have fired.
    std::thread::sleep(Duration::from_secs(2));
    let transitions = |d: &BenchDaemon| -> anyhow::Result<f64> {
        Ok(Scrape::parse(&d.metrics()?)?
            .scalar("cwatch_close_wait_transitions_total")
            .unwrap_or(f64::NAN))
    };
    let t0 = transitions(&daemon)?;
    let host_close_wait = count_close_wait()?;
    // The scrape's own work is over before the window opens.
    std::thread::sleep(Duration::from_millis(500));
    let window = Duration::from_secs(plan.quiet_secs);
    let ticks0 = system::cpu_seconds(daemon.pid)?;
    let mut cpu = CpuMeter::start(daemon.pid)?;
    let started = Instant::now();
    while started.elapsed() < window {
        std::thread::sleep(Duration::from_millis(500));
        cpu.sample()?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = system::cpu_seconds(daemon.pid)? - ticks0;
    let rss_mib = system::rss_mib(daemon.pid)?;
    let host_transitions = transitions(&daemon)? - t0;

    let mut scrape = Vec::new();
    for _ in 0..10 {
        let mut meter = CpuMeter::start(daemon.pid)?;
        daemon.metrics()?;
        std::thread::sleep(Duration::from_millis(50));
        meter.sample()?;
        scrape.push(meter.used_ns() as f64 / 1e6);
    }
    scrape.sort_by(f64::total_cmp);
    daemon.stop()?;
    let quiet = Quiet {
        window_s: elapsed,
        cpu_pct: cpu.used_ns() as f64 / 1e9 / elapsed * 100.0,
        cpu_pct_ticks: ticks / elapsed * 100.0,
        rss_mib,
        scrape_cpu_ms: scrape[scrape.len() / 2],
        host_transitions,
        host_close_wait,
    };
    eprintln!(
        "bench: quiet host: {:.3} % of a core over {:.0} s ({:.3} % by clock ticks), RSS {:.1} MiB, one scrape {:.2} CPU-ms; {} CLOSE_WAIT transitions on the host meanwhile, {} CLOSE_WAIT sockets at the start",
        quiet.cpu_pct,
        quiet.window_s,
        quiet.cpu_pct_ticks,
        quiet.rss_mib,
        quiet.scrape_cpu_ms,
        quiet.host_transitions,
        quiet.host_close_wait
    );
    Ok(quiet)
}

/// `ss -Htn state close-wait | wc -l`.
fn count_close_wait() -> anyhow::Result<usize> {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "close-wait"])
        .output()?;
    Ok(out.stdout.iter().filter(|&&b| b == b'\n').count())
}

/// The section of RESULTS.md.
pub fn render(q: &Quiet, s: &mut String) {
    let _ = writeln!(
        s,
        "A daemon with default settings and none of the bench's sockets in CLOSE_WAIT, left \
         alone for {:.0} s once it was ready and quiet (its start-up work over): no request \
         reached it during the window. CPU time summed over its threads from \
         /proc/PID/task/*/schedstat (ns), sampled every 0.5 s.\n\n\
         | CPU, % of a core | by clock ticks (10 ms) | RSS (MiB) | one /metrics scrape (CPU ms) | CLOSE_WAIT transitions on the host during the window | CLOSE_WAIT sockets on the host |\n\
         |---|---|---|---|---|---|\n\
         | {:.4} | {:.3} | {:.1} | {:.2} | {} | {} |\n\n\
         The machine is shared: transitions during the window are other processes' sockets, \
         which cwatch watches too. At one scrape every 15 s, scrapes add {:.4} % of a core.",
        q.window_s,
        q.cpu_pct,
        q.cpu_pct_ticks,
        q.rss_mib,
        q.scrape_cpu_ms,
        q.host_transitions,
        q.host_close_wait,
        q.scrape_cpu_ms / 15_000.0 * 100.0
    );
}
