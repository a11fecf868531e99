//! The soak as a bench section: `cwatch_testkit::soak` (mixed churn in
//! every shape, a slowly growing leak that stops at a bound, batches of
//! sockets tracked then closed) against a release daemon for `--soak SECS`
//! (10 minutes by default), its resident memory sampled every few seconds:
//! the curve goes into RESULTS.md and `soak.png`. The kernel test suite runs
//! the same soak for 60 s with assertions; this keeps the figures.
use std::{fmt::Write as _, time::Duration};

use cwatch_testkit::{prom::Scrape, soak};

use super::{daemon::BenchDaemon, procs::Bins};

/// The soak's daemon: leaked after 2 s (so the leaked gauge follows the
/// leak within the run), a reconciliation every 2 s (a full pass every
/// 20 s: drift would show).
pub const DAEMON_ARGS: &[&str] = &["--leak-after", "2s", "--reconcile-interval", "2s"];

pub fn run(secs: u64, bins: &Bins) -> anyhow::Result<soak::Outcome> {
    let length = Duration::from_secs(secs);
    let plan = soak::Plan {
        length,
        // About 120 samples whatever the length, at least one a second.
        sample_every: (length / 120).max(Duration::from_secs(1)),
        leak_steps: if secs >= 120 { 20 } else { 4 },
        leak_per_step: if secs >= 120 { 50 } else { 10 },
        batch: 200,
        burst: Duration::from_secs(1),
        load_bin: bins.load.clone(),
        churn_bin: bins.churn.clone(),
    };
    let daemon = BenchDaemon::start(&bins.cwatch, DAEMON_ARGS)?;
    daemon.settle()?;
    let metrics = || -> anyhow::Result<Scrape> { Scrape::parse(&daemon.metrics()?) };
    let out = soak::run(&plan, daemon.pid, &metrics)?;
    daemon.stop()?;
    eprintln!(
        "bench: soak {secs} s: RSS {:.1} MiB max, {:+.2} MiB after the warm-up; leak {} (ss {}), leaked gauge {}; corrections {} -> {} ({}); {} churned connections, {} batches",
        out.rss_max_mib(),
        out.rss_growth_mib(),
        out.leak,
        out.leak_ss,
        out.leaked_gauge,
        out.corrections_start,
        out.corrections_end,
        out.corrections_text(),
        out.churn_conns,
        out.batches
    );
    Ok(out)
}

/// The section of RESULTS.md: the outcome, then the curve (every sample up
/// to 40 rows; the chart has them all).
pub fn render(secs: u64, o: &soak::Outcome, s: &mut String) {
    let _ = writeln!(
        s,
        "{secs} s of mixed churn (`cwatch-churn` in every shape in turn, 1 s bursts with 1 s \
         pauses: {} connections, {} without a free port) beside a leak growing in steps over \
         the first three quarters of the run, then held, and {} batches of sockets kept 1 s \
         in CLOSE_WAIT (tracked) then closed ({} more given up: their connects did not finish \
         within a minute under the churn). The daemon runs `{}`.\n\n\
         | RSS max (MiB) | RSS growth after the warm-up (MiB) | leak | its CLOSE_WAIT sockets (ss) | leaked gauge | CLOSE_WAIT gauge | batches' sockets still counted | corrections (start → end; by kind) | full passes | events lost |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | {:.1} | {:+.2} | {} | {} | {} | {} | {} | {} → {}; {} | {} | {} |\n\n\
         The warm-up is the first fifth of the samples. The curve:\n\n\
         | t (s) | RSS (MiB) | leak | leaked gauge | CLOSE_WAIT gauge | corrections | churned connections |\n|---|---|---|---|---|---|---|",
        o.churn_conns,
        o.churn_errors,
        o.batches,
        o.batches_failed,
        DAEMON_ARGS.join(" "),
        o.rss_max_mib(),
        o.rss_growth_mib(),
        o.leak,
        o.leak_ss,
        o.leaked_gauge,
        o.close_wait_gauge,
        o.batch_gauge,
        o.corrections_start,
        o.corrections_end,
        o.corrections_text(),
        o.full_passes,
        o.events_lost
    );
    let every = o.samples.len().div_ceil(40).max(1);
    for (i, x) in o.samples.iter().enumerate() {
        if i % every == 0 || i + 1 == o.samples.len() {
            let _ = writeln!(
                s,
                "| {:.0} | {:.1} | {} | {} | {} | {} | {} |",
                x.t_s,
                x.rss_mib,
                x.leak,
                x.leaked_gauge,
                x.close_wait_gauge,
                x.corrections,
                x.churn_conns
            );
        }
    }
    let _ = writeln!(s, "\n![the soak's resident memory and leak](soak.png)");
}
