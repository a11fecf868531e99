//! Section 3, scale: at each level of CLOSE_WAIT sockets (held by
//! `holders`), a freshly started daemon's time to ready (probes attached and
//! the first reconciliation done) and to the full count in its gauges,
//! /metrics scrape latency, `cwatch ls` latency, resident memory and idle
//! CPU per hour (background plus full reconciliation passes, see `idle`);
//! side by side
//! with `ss -tn state close-wait | wc -l`, `ss -tnap state close-wait` and
//! node_exporter's tcpstat collector. tcp_mem is raised for the section
//! (restored after): the default enters memory pressure near 290k sockets.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use cwatch_testkit::prom::Scrape;

use super::{
    Plan,
    daemon::BenchDaemon,
    holders::{self, Holders},
    idle,
    procs::{self, Bins},
    stats::Samples,
    system::{self, Sysctl},
};

/// tcp_mem for the run, in pages: 16 / 24 / 32 GiB.
const TCP_MEM: &str = "4194304 6291456 8388608";

#[derive(Debug, Default)]
pub struct Level {
    pub sockets: usize,
    /// The holders' sockets in CLOSE_WAIT by `ss` (peer in 127.100/16): the
    /// ground truth the gauges are compared with.
    pub held: usize,
    /// `ss -Htn state close-wait | wc -l` (the whole host).
    pub ss_count: usize,
    pub ready_s: f64,
    /// From start until the gauges count every held socket.
    pub complete_s: f64,
    pub gauge_total: f64,
    pub scrape_ms: Samples,
    pub ls_ms: Samples,
    /// Why `cwatch ls` failed, if it did.
    pub ls_error: Option<String>,
    /// Resident memory once the gauges are complete and /metrics was
    /// scraped (steady state), and after the `cwatch ls` calls (each has the
    /// daemon serialize every socket as JSON).
    pub rss_mib: f64,
    pub rss_after_ls_mib: f64,
    pub cpu_s_per_hour: f64,
    /// CPU seconds of one full reconciliation pass (see `idle`).
    pub full_pass_s: f64,
    pub ss_wc_ms: Samples,
    pub ss_tnap_ms: Samples,
    pub node_ms: Samples,
    pub node_close_wait: f64,
}

#[derive(Debug, Default)]
pub struct Scale {
    pub levels: Vec<Level>,
    /// Why the run stopped below the largest planned level, if it did.
    pub stopped: Option<String>,
}

pub fn run(plan: &Plan, bins: &Bins) -> anyhow::Result<Scale> {
    let _tcp_mem = Sysctl::set("net.ipv4.tcp_mem", TCP_MEM)?;
    let node_port = cwatch_testkit::daemon::free_port()?;
    let _node = procs::node_exporter(node_port)?;
    let node_url = format!("http://127.0.0.1:{node_port}/metrics");
    let node_agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let mut holders = Holders::default();
    let mut scale = Scale::default();
    for &target in &plan.levels {
        if let Err(e) = holders.grow_to(bins, target) {
            let why = format!("stopped below {target} sockets: {e:#}");
            eprintln!("bench: {why}");
            scale.stopped = Some(why);
            break;
        }
        let level = match measure(plan, bins, &holders, &node_agent, &node_url) {
            Ok(level) => level,
            Err(e) => {
                let why = format!("measuring at {} sockets failed: {e:#}", holders.total);
                eprintln!("bench: {why}");
                scale.stopped = Some(why);
                break;
            }
        };
        eprintln!(
            "bench: {} sockets: ready {:.2} s, complete {:.2} s, scrape p50 {:.1} ms p99 {:.1} ms, ls {:.0} ms, RSS {:.1} MiB ({:.1} after ls), {:.1} CPU-s/h; ss|wc {:.0} ms, ss -tnap {:.0} ms, node_exporter {:.0} ms",
            level.sockets,
            level.ready_s,
            level.complete_s,
            level.scrape_ms.median(),
            level.scrape_ms.percentile(99.0),
            level.ls_ms.median(),
            level.rss_mib,
            level.rss_after_ls_mib,
            level.cpu_s_per_hour,
            level.ss_wc_ms.median(),
            level.ss_tnap_ms.median(),
            level.node_ms.median()
        );
        scale.levels.push(level);
    }
    Ok(scale)
}

fn measure(
    plan: &Plan,
    bins: &Bins,
    holders: &Holders,
    node_agent: &ureq::Agent,
    node_url: &str,
) -> anyhow::Result<Level> {
    let mut level = Level {
        sockets: holders.total,
        ..Level::default()
    };
    let big = holders.total >= 500_000;
    let pids: HashSet<String> = holders.pids().iter().map(u32::to_string).collect();

    level.held = count_lines(&format!(
        "ss -Htn state close-wait dst {}",
        holders::NETWORK
    ))?;
    let started = Instant::now();
    let daemon = BenchDaemon::start(&bins.cwatch, &["--reconcile-interval", idle::INTERVAL])?;
    level.ready_s = daemon.ready_after.as_secs_f64();
    loop {
        let scrape = Scrape::parse(&daemon.metrics()?)?;
        level.gauge_total = scrape
            .find("cwatch_process_close_wait_sockets", &[])
            .filter(|s| s.labels.get("pid").is_some_and(|p| pids.contains(p)))
            .map(|s| s.value)
            .sum();
        if level.gauge_total >= holders.total as f64 || started.elapsed() > Duration::from_secs(180)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    level.complete_s = started.elapsed().as_secs_f64();

    for _ in 0..plan.scrapes {
        let t = Instant::now();
        daemon.metrics()?;
        level.scrape_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    level.rss_mib = system::rss_mib(daemon.pid)?;
    let ls = format!("{} ls --listen {}", bins.cwatch.display(), daemon.addr);
    for _ in 0..if big { 1 } else { 5 } {
        match procs::time_shell(&ls) {
            Ok(ms) => level.ls_ms.push(ms),
            Err(e) => {
                eprintln!("bench: {e:#}");
                level.ls_error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    level.rss_after_ls_mib = system::rss_mib(daemon.pid)?;
    let idle = idle::measure(&daemon, plan.quick.then_some(plan.idle_secs))?;
    level.cpu_s_per_hour = idle.per_hour();
    level.full_pass_s = idle.full_pass_s;
    daemon.stop()?;

    let count = std::process::Command::new("sh")
        .args(["-c", "ss -Htn state close-wait | wc -l"])
        .output()?;
    level.ss_count = String::from_utf8_lossy(&count.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    // `ss -tnap` grows faster than linearly (47 s at 200,000 sockets here,
    // and still running after 10 minutes at 1M): not run at 500k and up.
    let reps = if big { 1 } else { 3 };
    for _ in 0..reps {
        level
            .ss_wc_ms
            .push(procs::time_shell("ss -tn state close-wait | wc -l")?);
        if !big {
            level
                .ss_tnap_ms
                .push(procs::time_shell("ss -tnap state close-wait")?);
        }
    }
    for _ in 0..plan.scrapes.min(if big { 3 } else { 10 }) {
        let t = Instant::now();
        let body = node_agent
            .get(node_url)
            .call()?
            .body_mut()
            .read_to_string()?;
        level.node_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        level.node_close_wait = body
            .lines()
            .find_map(|l| l.strip_prefix("node_tcp_connection_states{state=\"close_wait\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
    }
    Ok(level)
}

/// Lines printed by `sh -c SCRIPT`.
fn count_lines(script: &str) -> anyhow::Result<usize> {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()?;
    Ok(out.stdout.iter().filter(|&&b| b == b'\n').count())
}
