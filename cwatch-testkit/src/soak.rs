//! A soak: a daemon left running under mixed churn (every `churn` shape in
//! turn, in bursts with pauses between) while a leak grows slowly and stops
//! at a bound, and batches of sockets stay in CLOSE_WAIT long enough to be
//! tracked before their owner closes them; the daemon's resident memory,
//! its gauges and its corrections are sampled all along. Shared by the
//! kernel test (which asserts the gauges against `ss`) and the bench (which
//! reports the curve).
//!
//! The leak: one `cwatch-load` server with a listener per step on
//! [`LEAK_IP`] and one client per listener, all connected before the churn
//! starts (under this churn a connect on loopback can wait seconds for a
//! retransmitted SYN, even without cwatch); at each step the server closes
//! the next listener's sockets, which leaves that client's in CLOSE_WAIT
//! for good. The tracked-then-closed batches go through a server of their
//! own on [`TRANSIENT_IP`], one per batch; a batch whose connects do not
//! finish in time is counted and skipped.
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{churn, load::Load, prom::Scrape, ss};

/// Where the leak's listeners are (the leaked sockets' peer).
pub const LEAK_IP: &str = "127.0.9.1";
/// Where the tracked-then-closed batches connect.
pub const TRANSIENT_IP: &str = "127.0.9.2";
/// Comm of the leaking clients.
pub const LEAK_COMM: &str = "cw-soak-leak";

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub length: Duration,
    pub sample_every: Duration,
    /// The leak grows `leak_steps` times by `leak_per_step` sockets over the
    /// first three quarters of the run, then stays.
    pub leak_steps: usize,
    pub leak_per_step: usize,
    /// Sockets per tracked-then-closed batch (kept 1 s in CLOSE_WAIT).
    pub batch: usize,
    /// Each churn burst lasts this long, and so does the pause after it.
    pub burst: Duration,
    pub load_bin: PathBuf,
    pub churn_bin: PathBuf,
}

/// One sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the soak started.
    pub t_s: f64,
    pub rss_mib: f64,
    /// Sockets leaked so far.
    pub leak: usize,
    /// `cwatch_process_leaked_sockets` of the leaking clients.
    pub leaked_gauge: f64,
    /// `cwatch_process_close_wait_sockets` of the leaking clients.
    pub close_wait_gauge: f64,
    /// `cwatch_reconcile_corrections_total`, all kinds.
    pub corrections: f64,
    /// Connections the churn made so far.
    pub churn_conns: u64,
}

/// What the soak saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// Sockets leaked, and the leaking clients' CLOSE_WAIT sockets per `ss`
    /// at the end.
    pub leak: usize,
    pub leak_ss: usize,
    /// At the end, once they agree with `ss` (or after 10 s).
    pub leaked_gauge: f64,
    pub close_wait_gauge: f64,
    /// Tracked-then-closed batches, those given up (their connects did not
    /// finish in time), and the sockets of theirs the gauges still count at
    /// the end (none, if every close was seen).
    pub batches: u64,
    pub batches_failed: u64,
    pub batch_gauge: f64,
    pub corrections_start: f64,
    pub corrections_end: f64,
    /// The corrections made during the soak by kind (`added`, `removed`,
    /// `map_added`, `map_removed`): which way the drift went.
    pub corrections_by_kind: Vec<(String, f64)>,
    /// Full reconciliation passes during the soak.
    pub full_passes: f64,
    pub events_lost: f64,
    pub churn_conns: u64,
    pub churn_errors: u64,
}

impl Outcome {
    /// Resident memory growth from the end of the first fifth (warm-up:
    /// allocator pools, thread stacks, the first full pass) to the end.
    pub fn rss_growth_mib(&self) -> f64 {
        let warm = self.samples.len() / 5;
        match (self.samples.get(warm), self.samples.last()) {
            (Some(a), Some(b)) => b.rss_mib - a.rss_mib,
            _ => f64::NAN,
        }
    }

    /// The corrections by kind, e.g. `added 3, map_removed 1`, or `none`.
    pub fn corrections_text(&self) -> String {
        if self.corrections_by_kind.is_empty() {
            return "none".into();
        }
        let kinds: Vec<String> = self
            .corrections_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        kinds.join(", ")
    }

    pub fn rss_max_mib(&self) -> f64 {
        self.samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max)
    }
}

fn sum(scrape: &Scrape, name: &str, pids: &HashSet<String>) -> f64 {
    scrape
        .find(name, &[])
        .filter(|s| s.labels.get("pid").is_some_and(|p| pids.contains(p)))
        .map(|s| s.value)
        .fold(0.0, |a, b| a + b)
}

/// `cwatch_reconcile_corrections_total` by kind.
fn corrections_by_kind(scrape: &Scrape) -> Vec<(String, f64)> {
    scrape
        .find("cwatch_reconcile_corrections_total", &[])
        .map(|s| (s.labels.get("kind").cloned().unwrap_or_default(), s.value))
        .collect()
}

fn corrections(scrape: &Scrape) -> f64 {
    scrape
        .find("cwatch_reconcile_corrections_total", &[])
        .map(|s| s.value)
        .fold(0.0, |a, b| a + b)
}

/// Runs the soak against the daemon `pid`, read through `metrics`.
pub fn run(
    plan: &Plan,
    pid: u32,
    metrics: &(dyn Fn() -> anyhow::Result<Scrape> + Sync),
) -> anyhow::Result<Outcome> {
    let steps = plan.leak_steps.max(1);
    let mut server_args = vec!["server".to_string()];
    for _ in 0..steps {
        server_args.extend(["--listen".into(), format!("{LEAK_IP}:0")]);
    }
    let mut server = Load::spawn_bin(&plan.load_bin, &[], &server_args)?;
    let mut listeners = Vec::new();
    for _ in 0..steps {
        let line = server.expect("listening", Duration::from_secs(30))?;
        listeners.push(
            line.split_whitespace()
                .nth(1)
                .context("no address")?
                .to_string(),
        );
    }
    server.expect("ready", Duration::from_secs(30))?;

    // Every leak client connected now, before the churn; the leak grows as
    // the server closes their peers, one listener per step.
    let mut clients: Vec<Load> = Vec::new();
    for addr in &listeners {
        clients.push(connect_leak(plan, &mut server, addr)?);
    }
    let leak_pids: HashSet<String> = clients.iter().map(|c| c.pid.to_string()).collect();

    let first = metrics()?;
    let mut out = Outcome {
        corrections_start: corrections(&first),
        ..Outcome::default()
    };
    let full0 = first
        .get("cwatch_reconcile_passes_total", &[("pass", "full")])
        .unwrap_or(0.0);
    let lost0 = first.scalar("cwatch_events_lost_total").unwrap_or(0.0);
    let stop = AtomicBool::new(false);
    let conns = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let batch_pids = std::sync::Mutex::new(HashSet::new());
    let started = Instant::now();
    let mut closed = 0;

    let result = std::thread::scope(|s| -> anyhow::Result<()> {
        let churner = s.spawn(|| churn_loop(plan, &stop, &conns, &errors));
        let batcher = s.spawn(|| batch_loop(plan, &stop, &batch_pids));
        let step_every = plan.length.mul_f64(0.75 / steps as f64);
        let mut next_sample = Duration::ZERO;
        let body = (|| -> anyhow::Result<()> {
            while started.elapsed() < plan.length {
                let t = started.elapsed();
                let due = ((t.as_secs_f64() / step_every.as_secs_f64()) as usize).min(steps);
                while closed < due {
                    server.ask(&format!("close {}", listeners[closed]), "closed")?;
                    closed += 1;
                }
                if t >= next_sample {
                    let scrape = metrics()?;
                    out.samples.push(Sample {
                        t_s: t.as_secs_f64(),
                        rss_mib: rss_mib(pid)?,
                        leak: closed * plan.leak_per_step,
                        leaked_gauge: sum(&scrape, "cwatch_process_leaked_sockets", &leak_pids),
                        close_wait_gauge: sum(
                            &scrape,
                            "cwatch_process_close_wait_sockets",
                            &leak_pids,
                        ),
                        corrections: corrections(&scrape),
                        churn_conns: conns.load(Ordering::Relaxed),
                    });
                    next_sample += plan.sample_every;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let churned = churner.join();
        let batched = batcher.join();
        body?;
        churned.map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
        (out.batches, out.batches_failed) =
            batched.map_err(|_| anyhow::anyhow!("the batch thread panicked"))??;
        Ok(())
    });
    result?;

    out.leak = closed * plan.leak_per_step;
    let leak_ip: std::net::IpAddr = LEAK_IP.parse()?;
    let held = || -> anyhow::Result<usize> {
        Ok(ss::close_wait()?
            .iter()
            .filter(|s| {
                ss::shown(s.peer.ip()) == leak_ip
                    && s.users
                        .iter()
                        .any(|u| leak_pids.contains(&u.pid.to_string()))
            })
            .count())
    };
    let batch_pids: HashSet<String> = batch_pids
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(u32::to_string)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let scrape = metrics()?;
        out.leak_ss = held()?;
        out.leaked_gauge = sum(&scrape, "cwatch_process_leaked_sockets", &leak_pids);
        out.close_wait_gauge = sum(&scrape, "cwatch_process_close_wait_sockets", &leak_pids);
        out.batch_gauge = sum(&scrape, "cwatch_process_close_wait_sockets", &batch_pids);
        let agree = out.leaked_gauge == out.leak as f64
            && out.close_wait_gauge == out.leak_ss as f64
            && out.batch_gauge == 0.0;
        if agree || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    out.corrections_end = corrections(&last);
    let before = corrections_by_kind(&first);
    out.corrections_by_kind = corrections_by_kind(&last)
        .into_iter()
        .map(|(kind, n)| {
            let n0 = before.iter().find(|(k, _)| *k == kind).map_or(0.0, |b| b.1);
            (kind, n - n0)
        })
        .filter(|(_, n)| *n != 0.0)
        .collect();
    out.full_passes = last
        .get("cwatch_reconcile_passes_total", &[("pass", "full")])
        .unwrap_or(0.0)
        - full0;
    out.events_lost = last.scalar("cwatch_events_lost_total").unwrap_or(0.0) - lost0;
    out.churn_conns = conns.load(Ordering::Relaxed);
    out.churn_errors = errors.load(Ordering::Relaxed);
    drop(clients);
    drop(server);
    Ok(out)
}

/// A leak client: `leak_per_step` connections to `addr`, all accepted.
fn connect_leak(plan: &Plan, server: &mut Load, addr: &str) -> anyhow::Result<Load> {
    let n = plan.leak_per_step.to_string();
    let args = [
        "client",
        "--comm",
        LEAK_COMM,
        "--on-eof",
        "leak",
        "--threads",
        "1",
        "--connect",
        addr,
        "--count",
        &n,
    ]
    .map(String::from);
    let mut client = Load::spawn_bin(&plan.load_bin, &[], &args)?;
    client.expect("connected", Duration::from_secs(60))?;
    server.ask(&format!("wait-accepted {addr} {n}"), "accepted")?;
    Ok(client)
}

/// Churn bursts in every shape in turn, a pause after each, until `stop`.
fn churn_loop(
    plan: &Plan,
    stop: &AtomicBool,
    conns: &AtomicU64,
    errors: &AtomicU64,
) -> anyhow::Result<()> {
    for shape in churn::ALL.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let run = shape.run(&plan.churn_bin, plan.burst.as_secs_f64())?;
        conns.fetch_add(run.conns, Ordering::Relaxed);
        errors.fetch_add(run.errors, Ordering::Relaxed);
        pause(plan.burst, stop);
    }
    Ok(())
}

/// Tracked-then-closed batches until `stop`: a server of its own, a client
/// with `batch` connections, the server's close, a second in CLOSE_WAIT
/// (past the daemon's track-after), the client's close. Returns the
/// batches done, and those given up because their connects did not finish
/// within [`BATCH_CONNECT`].
fn batch_loop(
    plan: &Plan,
    stop: &AtomicBool,
    pids: &std::sync::Mutex<HashSet<u32>>,
) -> anyhow::Result<(u64, u64)> {
    let (mut done, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let args = ["server", "--listen", &format!("{TRANSIENT_IP}:0")].map(String::from);
        let mut server = Load::spawn_bin(&plan.load_bin, &[], &args)?;
        let line = server.expect("listening", Duration::from_secs(30))?;
        let addr = line
            .split_whitespace()
            .nth(1)
            .context("no address")?
            .to_string();
        server.expect("ready", Duration::from_secs(30))?;
        let n = plan.batch.to_string();
        let args = [
            "client",
            "--comm",
            "cw-soak-batch",
            "--on-eof",
            "leak",
            "--threads",
            "1",
            "--connect",
            &addr,
            "--count",
            &n,
        ]
        .map(String::from);
        let mut client = Load::spawn_bin(&plan.load_bin, &[], &args)?;
        pids.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client.pid);
        if !wait_connected(&mut client, stop) {
            // Killed when dropped: its sockets never reached CLOSE_WAIT.
            failed += 1;
            continue;
        }
        server.ask(&format!("wait-accepted {addr} {n}"), "accepted")?;
        server.ask(&format!("close {addr}"), "closed")?;
        std::thread::sleep(Duration::from_secs(1));
        client.ask("close-all", "closed")?;
        done += 1;
        pause(Duration::from_secs(2), stop);
    }
    Ok((done, failed))
}

/// How long a batch's connects may take.
const BATCH_CONNECT: Duration = Duration::from_secs(60);

/// Waits for `connected` (at most [`BATCH_CONNECT`], less once `stop` is
/// set): whether it came.
fn wait_connected(client: &mut Load, stop: &AtomicBool) -> bool {
    let until = Instant::now() + BATCH_CONNECT;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        if client.expect("connected", Duration::from_secs(1)).is_ok() {
            return true;
        }
    }
    false
}

/// Sleeps `d`, or less once `stop` is set.
fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}
