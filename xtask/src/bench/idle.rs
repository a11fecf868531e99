//! Idle CPU of a daemon holding a level's sockets, per hour at the default
//! `--reconcile-interval` (60 s) and `--reconcile-budget` (0.5 % of a core).
//! A reconciliation pass is skipped unless the kernel counted a lost event;
//! a full one runs regardless as a safety net every ten intervals, or less
//! often where the last one cost more than the budget affords (at most six
//! an hour): too few to catch in a short window. The bench daemon runs with
//! a short interval and a whole core's budget instead ([`DAEMON_ARGS`]:
//! one full pass in ten); this measures the background (a window between
//! two full passes, once the previous one and the walk of `/proc` it asked
//! for are over) and one full pass (the next window, which holds one, minus
//! the background), and adds them up for an hour at the defaults.
use std::time::{Duration, Instant};

use anyhow::bail;
use cwatch_testkit::prom::Scrape;

use super::{daemon::BenchDaemon, system};

/// The bench daemon's reconciliation: a full pass every ten intervals.
pub const DAEMON_ARGS: [&str; 4] = ["--reconcile-interval", "6s", "--reconcile-budget", "100%"];
const INTERVAL_SECS: f64 = 6.0;
/// Full passes per hour at the default interval (60 s, one in ten full)
/// when they cost nothing.
const FULL_PER_HOUR: f64 = 6.0;
/// The default `--reconcile-budget`: the share of a core full passes use
/// at most (the daemon's `reconcile::schedule`).
const BUDGET: f64 = 0.005;
/// The background window.
const BACKGROUND: Duration = Duration::from_secs(10);
/// A daemon using less than this share of a core over a second is done
/// with its pass (and walk).
const QUIET: f64 = 0.05;

#[derive(Debug, Default, Clone, Copy)]
pub struct Idle {
    /// CPU seconds per second with no full pass running.
    pub background: f64,
    /// CPU seconds of one full pass (and the walk it asks for).
    pub full_pass_s: f64,
}

impl Idle {
    /// Full passes per hour at the defaults: six, or as many as the budget
    /// affords at this cost.
    pub fn full_per_hour(&self) -> f64 {
        if self.full_pass_s <= 0.0 {
            return FULL_PER_HOUR;
        }
        FULL_PER_HOUR.min(BUDGET * 3600.0 / self.full_pass_s)
    }

    /// CPU seconds per hour at the defaults.
    pub fn per_hour(&self) -> f64 {
        self.background * 3600.0 + self.full_per_hour() * self.full_pass_s
    }
}

fn full_passes(daemon: &BenchDaemon) -> anyhow::Result<f64> {
    Ok(Scrape::parse(&daemon.metrics()?)?
        .get("cwatch_reconcile_passes_total", &[("pass", "full")])
        .unwrap_or(0.0))
}

/// Waits for the full pass after `seen` (at most two full periods).
fn next_full(daemon: &BenchDaemon, seen: f64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(INTERVAL_SECS * 20.0 + 5.0);
    loop {
        let now = full_passes(daemon)?;
        if now > seen {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("no full reconciliation pass within two periods");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (at most a minute) until `daemon` uses under [`QUIET`] of a core
/// over a second: the full pass and the walk it asked for are over.
fn settle(daemon: &BenchDaemon) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = system::cpu_seconds(daemon.pid)?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let now = system::cpu_seconds(daemon.pid)?;
        if now - last < QUIET {
            return Ok(());
        }
        last = now;
    }
    bail!("the daemon did not go quiet within a minute of a full pass")
}

/// Measures `daemon` (started with [`DAEMON_ARGS`]).
/// `quick`: the background over `quick_secs` only, no full pass.
pub fn measure(daemon: &BenchDaemon, quick: Option<u64>) -> anyhow::Result<Idle> {
    let sample = || -> anyhow::Result<(Instant, f64)> {
        Ok((Instant::now(), system::cpu_seconds(daemon.pid)?))
    };
    if let Some(secs) = quick {
        let (t0, c0) = sample()?;
        std::thread::sleep(Duration::from_secs(secs));
        let (t1, c1) = sample()?;
        return Ok(Idle {
            background: (c1 - c0) / (t1 - t0).as_secs_f64(),
            full_pass_s: 0.0,
        });
    }
    // Full passes are counted once done.
    let passes = next_full(daemon, full_passes(daemon)?)?;
    settle(daemon)?;
    let (t0, c0) = sample()?;
    std::thread::sleep(BACKGROUND);
    let (t1, c1) = sample()?;
    if full_passes(daemon)? > passes {
        bail!("a full pass came early: the background window is not clean");
    }
    let background = (c1 - c0) / (t1 - t0).as_secs_f64();
    next_full(daemon, passes)?;
    settle(daemon)?;
    let (t2, c2) = sample()?;
    let full_pass_s = ((c2 - c1) - background * (t2 - t1).as_secs_f64()).max(0.0);
    Ok(Idle {
        background,
        full_pass_s,
    })
}
