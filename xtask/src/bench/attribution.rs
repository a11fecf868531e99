//! Attribution at scale: how soon the owner (pid) and the fd of a new
//! CLOSE_WAIT socket are known when many processes leak a few sockets each —
//! `cwatch-hold` processes of [`PER_PROCESS`] sockets started in waves while
//! a daemon runs (none of them on the watch list: their owners come from
//! /proc). Two measures: the daemon's own `cwatch_attribution_seconds`
//! histogram (transition → fd holders known), and the API polled every
//! half second, where each socket's age when first seen with its pid (and
//! with its fd) known bounds the delay from above, and its age when last
//! seen without, from below.
use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::atomic::{AtomicU8, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use cwatch_testkit::prom::Scrape;

use super::{Plan, daemon::BenchDaemon, holders::Holders, procs::Bins, stats::Samples};

/// Sockets per holding process.
pub const PER_PROCESS: usize = 25;
/// Holders started (and filled) at once.
const WAVE: usize = 100;
/// The holders listen in 127.101/16.
const NET: u8 = 101;

#[derive(Debug, Default)]
pub struct Attribution {
    pub processes: usize,
    pub sockets: usize,
    /// Seconds from the first holder's start to the last one holding.
    pub spawn_s: f64,
    /// Histogram delta over the section: observations, and those ≤ 1 s.
    pub observed: f64,
    pub within_1s: f64,
    /// histogram_quantile(0.99) of the delta (linear within a bucket).
    pub hist_p99_s: f64,
    /// From the API: upper bounds (age when first seen known), seconds.
    pub pid_upper_s: Samples,
    pub fd_upper_s: Samples,
    /// Lower bounds (age when last seen unknown; 0 if never seen so).
    pub pid_lower_s: Samples,
    /// Sockets never seen with a pid / an fd before the deadline.
    pub pid_missing: usize,
    pub fd_missing: usize,
    /// Median time of one API poll (ms).
    pub poll_ms: f64,
}

/// Per socket: (age when last seen without a pid, age when first seen with
/// one), the same for the fd.
#[derive(Default)]
struct Seen {
    pid: (f64, Option<f64>),
    fd: (f64, Option<f64>),
}

/// The fields of an API socket the poll reads (the rest is skipped
/// unparsed: the poll runs beside the daemon it measures).
#[derive(serde::Deserialize)]
struct Polled {
    cookie: u64,
    age_seconds: f64,
    peer_addr: String,
    pid: Option<u32>,
    fd: Option<i32>,
}

/// Polls the API every half second while the holders start, until every
/// one of the `target` sockets has its pid and fd known, or a minute after
/// the last holder started.
fn poll(
    daemon: &BenchDaemon,
    target: usize,
    phase: &AtomicU8,
) -> anyhow::Result<(HashMap<u64, Seen>, Samples)> {
    let prefix = format!("127.{NET}.");
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    let mut polls = Samples::default();
    let mut deadline = None;
    loop {
        let t = Instant::now();
        let (status, body) = daemon.get("/api/v1/sockets")?;
        if status != 200 {
            bail!("/api/v1/sockets answered {status}");
        }
        let sockets: Vec<Polled> =
            serde_json::from_str(&body).context("decoding /api/v1/sockets")?;
        polls.push(t.elapsed().as_secs_f64() * 1000.0);
        for s in &sockets {
            if !s.peer_addr.starts_with(&prefix) {
                continue;
            }
            let e = seen.entry(s.cookie).or_default();
            for (known, slot) in [(s.pid.is_some(), &mut e.pid), (s.fd.is_some(), &mut e.fd)] {
                match (known, slot.1) {
                    (false, _) => slot.0 = s.age_seconds,
                    (true, None) => slot.1 = Some(s.age_seconds),
                    (true, Some(_)) => {}
                }
            }
        }
        let done = seen
            .values()
            .filter(|e| e.fd.1.is_some() && e.pid.1.is_some())
            .count();
        match phase.load(Ordering::Relaxed) {
            0 => {}
            1 if done >= target => break,
            1 => {
                let at = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
                if Instant::now() > at {
                    break;
                }
            }
            _ => break,
        }
        std::thread::sleep(Duration::from_millis(500).saturating_sub(t.elapsed()));
    }
    Ok((seen, polls))
}

pub fn run(plan: &Plan, bins: &Bins) -> anyhow::Result<Attribution> {
    let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
    daemon.settle()?;
    let before = histogram(&daemon)?;
    let mut holders = Holders::new(NET, PER_PROCESS, WAVE)?;
    let target = plan.attribution_processes * PER_PROCESS;
    let started = Instant::now();
    // 0: spawning, 1: all holding, 2: spawning failed.
    let phase = AtomicU8::new(0);
    let (grown, polled) = std::thread::scope(|s| {
        let poller = s.spawn(|| poll(&daemon, target, &phase));
        let grown = holders.grow_to(bins, target);
        phase.store(if grown.is_ok() { 1 } else { 2 }, Ordering::Relaxed);
        (grown, poller.join())
    });
    grown?;
    let spawn_s = started.elapsed().as_secs_f64();
    let (seen, polls) = match polled {
        Ok(result) => result?,
        Err(_) => bail!("the API poller panicked"),
    };
    let after = histogram(&daemon)?;
    drop(holders);
    daemon.stop()?;

    let mut out = Attribution {
        processes: plan.attribution_processes,
        sockets: target,
        spawn_s,
        poll_ms: polls.median(),
        ..Attribution::default()
    };
    let delta = after.minus(&before);
    out.observed = delta.count;
    out.within_1s = delta.at_most(1.0);
    out.hist_p99_s = delta.quantile(0.99);
    out.pid_missing = target.saturating_sub(seen.values().filter(|e| e.pid.1.is_some()).count());
    out.fd_missing = target.saturating_sub(seen.values().filter(|e| e.fd.1.is_some()).count());
    for e in seen.values() {
        if let Some(up) = e.pid.1 {
            out.pid_upper_s.push(up);
            out.pid_lower_s.push(e.pid.0);
        }
        if let Some(up) = e.fd.1 {
            out.fd_upper_s.push(up);
        }
    }
    eprintln!(
        "bench: attribution, {} sockets in {} processes (started in {:.1} s): histogram p99 {:.2} s ({} of {} observations ≤ 1 s); API: pid p99 ≤ {:.2} s (≥ {:.2} s), fd p99 ≤ {:.2} s; {} without a pid, {} without an fd; one poll {:.0} ms",
        out.sockets,
        out.processes,
        out.spawn_s,
        out.hist_p99_s,
        out.within_1s,
        out.observed,
        out.pid_upper_s.percentile(99.0),
        out.pid_lower_s.percentile(99.0),
        out.fd_upper_s.percentile(99.0),
        out.pid_missing,
        out.fd_missing,
        out.poll_ms
    );
    Ok(out)
}

/// A Prometheus histogram: cumulative counts by upper bound, and the count.
#[derive(Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
}

fn histogram(daemon: &BenchDaemon) -> anyhow::Result<Histogram> {
    let scrape = Scrape::parse(&daemon.metrics()?)?;
    Ok(Histogram::from_scrape(
        &scrape,
        "cwatch_attribution_seconds",
    ))
}

impl Histogram {
    pub fn from_scrape(scrape: &Scrape, name: &str) -> Histogram {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = scrape
            .find(&bucket, &[])
            .filter_map(|s| {
                let le = s.labels.get("le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            count: scrape.scalar(&format!("{name}_count")).unwrap_or(0.0),
        }
    }

    /// `self` − `earlier`, bucket by bucket.
    pub fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let was = earlier
                    .buckets
                    .iter()
                    .find(|b| b.0 == le)
                    .map_or(0.0, |b| b.1);
                (le, n - was)
            })
            .collect();
        Histogram {
            buckets,
            count: self.count - earlier.count,
        }
    }

    /// Observations of at most `le` (a bucket bound).
    pub fn at_most(&self, le: f64) -> f64 {
        self.buckets
            .iter()
            .find(|b| b.0 == le)
            .map_or(f64::NAN, |b| b.1)
    }

    /// The `q` quantile as Prometheus' histogram_quantile computes it:
    /// linear within the bucket it falls in; the highest finite bound if it
    /// falls in +Inf; NaN without observations.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let rank = q * self.count;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return lower;
                }
                let share = if n > below {
                    (rank - below) / (n - below)
                } else {
                    0.0
                };
                return lower + (le - lower) * share;
            }
            (lower, below) = (le, n);
        }
        lower
    }
}

/// The section of RESULTS.md.
pub fn render(a: &Attribution, s: &mut String) {
    let _ = writeln!(
        s,
        "{} `cwatch-hold` processes of {PER_PROCESS} CLOSE_WAIT sockets each ({} sockets), \
         started {WAVE} at a time while a daemon with default settings runs (they took \
         {:.1} s to start; none is on the watch list, so every owner comes from /proc). \
         The daemon's `cwatch_attribution_seconds` (transition → fd holders known) over the \
         section, and the API polled every 0.5 s (one poll took {:.0} ms): a socket's age \
         when first seen with its pid (fd) known bounds the delay from above, its age when \
         last seen without, from below.\n\n\
         | measure | p50 | p99 | max | never known |\n|---|---|---|---|---|\n\
         | histogram (fd holders known) | — | {:.2} s ({:.1} % of {} observations ≤ 1 s) | — | — |\n\
         | API: pid known, upper bound | {:.2} s | {:.2} s | {:.2} s | {} |\n\
         | API: pid known, lower bound | {:.2} s | {:.2} s | {:.2} s | |\n\
         | API: fd known, upper bound | {:.2} s | {:.2} s | {:.2} s | {} |",
        a.processes,
        a.sockets,
        a.spawn_s,
        a.poll_ms,
        a.hist_p99_s,
        a.within_1s / a.observed * 100.0,
        a.observed,
        a.pid_upper_s.median(),
        a.pid_upper_s.percentile(99.0),
        a.pid_upper_s.max(),
        a.pid_missing,
        a.pid_lower_s.median(),
        a.pid_lower_s.percentile(99.0),
        a.pid_lower_s.max(),
        a.fd_upper_s.median(),
        a.fd_upper_s.percentile(99.0),
        a.fd_upper_s.max(),
        a.fd_missing,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_from_text_and_quantiles() {
        let text = "cwatch_attribution_seconds_bucket{le=\"0.5\"} 50\n\
                    cwatch_attribution_seconds_bucket{le=\"1\"} 90\n\
                    cwatch_attribution_seconds_bucket{le=\"+Inf\"} 100\n\
                    cwatch_attribution_seconds_sum 70\n\
                    cwatch_attribution_seconds_count 100\n";
        let h = Histogram::from_scrape(&Scrape::parse(text).unwrap(), "cwatch_attribution_seconds");
        assert_eq!(h.count, 100.0);
        assert_eq!(h.at_most(1.0), 90.0);
        assert_eq!(h.quantile(0.5), 0.5);
        assert!((h.quantile(0.7) - 0.75).abs() < 1e-9);
        assert_eq!(h.quantile(0.99), 1.0, "in +Inf: the highest finite bound");
        let earlier = Histogram {
            buckets: vec![(0.5, 10.0), (1.0, 10.0), (f64::INFINITY, 10.0)],
            count: 10.0,
        };
        let d = h.minus(&earlier);
        assert_eq!(d.count, 90.0);
        assert_eq!(d.at_most(0.5), 40.0);
        assert!(Histogram::default().quantile(0.99).is_nan());
    }
}
