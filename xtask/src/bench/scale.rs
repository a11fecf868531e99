//! Section 3, scale: at each level of CLOSE_WAIT sockets (held by
//! `holders`), a freshly started daemon's time to ready (probes attached and
//! the first reconciliation done) and to the full count in its gauges,
//! /metrics scrape latency, `cwatch ls` latency (the default view: the
//! summary and the oldest 100 rows; and every row, `--all --json`),
//! resident memory and idle CPU per hour (background plus full
//! reconciliation passes, see `idle`); side by side with
//! `ss -tn state close-wait | wc -l`, `ss -tnap state close-wait` and
//! node_exporter's tcpstat collector. tcp_mem is raised for the section
//! (restored after): the default enters memory pressure near 290k sockets.
use std::{
    collections::HashSet,
    fmt::Write as _,
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
    /// `cwatch ls` (the default view).
    pub ls_ms: Samples,
    /// `cwatch ls --all --json > /dev/null`.
    pub ls_all_json_ms: Samples,
    /// Why `cwatch ls` failed, if it did.
    pub ls_error: Option<String>,
    /// Resident memory once the gauges are complete and /metrics was
    /// scraped (start-up's transient maps may not be given back yet: not the
    /// steady state, see `settled_rss_mib`), and after the `cwatch ls` calls (each has the
    /// daemon serialize every socket as JSON).
    pub rss_mib: f64,
    pub rss_after_ls_mib: f64,
    /// Resident memory at the end of the idle window: the daemon quiet for
    /// a while, start-up's transient maps and `ls`'s buffers given back
    /// (what a host carries from then on; the target is judged on it).
    pub settled_rss_mib: f64,
    /// The most resident memory the daemon had (VmHWM: start-up's passes
    /// over every socket), read after the `cwatch ls` calls.
    pub peak_rss_mib: f64,
    pub cpu_s_per_hour: f64,
    /// CPU seconds of one full reconciliation pass (see `idle`).
    pub full_pass_s: f64,
    /// Full passes an hour at the defaults (see `idle`).
    pub full_per_hour: f64,
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
    let mut holders = Holders::new(100, holders::MAX_PER_PROCESS, 2)?;
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
            "bench: {} sockets: ready {:.2} s, complete {:.2} s, scrape p50 {:.1} ms p99 {:.1} ms, ls {:.0} ms, ls --all --json {:.0} ms, RSS {:.1} MiB ({:.1} after ls, {:.1} settled), {:.1} CPU-s/h; ss|wc {:.0} ms, ss -tnap {:.0} ms, node_exporter {:.0} ms",
            level.sockets,
            level.ready_s,
            level.complete_s,
            level.scrape_ms.median(),
            level.scrape_ms.percentile(99.0),
            level.ls_ms.median(),
            level.ls_all_json_ms.median(),
            level.rss_mib,
            level.rss_after_ls_mib,
            level.settled_rss_mib,
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
        holders.network()
    ))?;
    let started = Instant::now();
    let daemon = BenchDaemon::start(&bins.cwatch, &idle::DAEMON_ARGS)?;
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
    let ls_all = format!("{ls} --all --json > /dev/null");
    // Taking turns, three times each, and `ss | wc -l` right after each
    // `--all --json` (the two are compared in the same run).
    for _ in 0..3 {
        for (script, samples) in [
            (&ls, &mut level.ls_ms),
            (&ls_all, &mut level.ls_all_json_ms),
        ] {
            match procs::time_shell(script) {
                Ok(ms) => samples.push(ms),
                Err(e) => {
                    eprintln!("bench: {e:#}");
                    level.ls_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
        level
            .ss_wc_ms
            .push(procs::time_shell("ss -tn state close-wait | wc -l")?);
    }
    level.rss_after_ls_mib = system::rss_mib(daemon.pid)?;
    level.peak_rss_mib = system::peak_rss_mib(daemon.pid)?;
    let idle = idle::measure(&daemon, plan.quick.then_some(plan.idle_secs))?;
    level.cpu_s_per_hour = idle.per_hour();
    level.full_pass_s = idle.full_pass_s;
    level.full_per_hour = idle.full_per_hour();
    level.settled_rss_mib = system::rss_mib(daemon.pid)?;
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
    if !big {
        for _ in 0..3 {
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

/// The section of RESULTS.md.
pub fn render(sc: &Scale, s: &mut String) {
    let _ = writeln!(
        s,
        "CLOSE_WAIT sockets held on loopback by `cwatch-hold` processes (≤ 9,500 each; the \
         accepted ends stay open in FIN_WAIT2, so no orphans), net.ipv4.tcp_mem raised for \
         the run (restored after). Times in ms (median; p99 for /metrics); the daemon is \
         started after the sockets exist. `cwatch ls` is the default view (the summary, then \
         the oldest 100 rows); `ls --all --json` streams every row to /dev/null, taking turns \
         with `ss -tn … | wc -l` (three times each, the daemon idle). Idle CPU is per hour at \
         the defaults (`--reconcile-interval 60s`, `--reconcile-budget 0.5%`): the background \
         between full reconciliation passes, plus the safety net's full passes (one interval \
         in ten, six an hour, or fewer where one costs more than 0.5 % of a core affords; the \
         other passes are skipped unless the kernel counted a lost event), each measured on \
         its own (the bench daemon reconciles every 6 s with a whole core's budget to have \
         one in reach; a window starts once the daemon is quiet again after a pass and the \
         walk it asked for). RSS is read three times: once every socket is counted and \
         /metrics was scraped, after the `ls` calls, and settled at the end of the idle \
         window (start-up's transient maps given back; the target is judged on this one).\n\n\
         | sockets | held (ss) | host total (ss) | cwatch gauges | ready (s) | all counted (s) | /metrics p50 | /metrics p99 | `cwatch ls` | `ls --all --json` | RSS (MiB) | RSS after ls (MiB) | RSS settled (MiB) | peak RSS (MiB) | idle CPU-s/h | one full pass (CPU-s) | full passes/h | `ss -tn … \\| wc -l` | `ss -tnap …` | node_exporter tcpstat |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for l in &sc.levels {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} | {} | {:.0} |",
            l.sockets,
            l.held,
            l.ss_count,
            l.gauge_total,
            l.ready_s,
            l.complete_s,
            l.scrape_ms.median(),
            l.scrape_ms.percentile(99.0),
            l.ls_ms.median(),
            l.ls_all_json_ms.median(),
            l.rss_mib,
            l.rss_after_ls_mib,
            l.settled_rss_mib,
            l.peak_rss_mib,
            l.cpu_s_per_hour,
            l.full_pass_s,
            l.full_per_hour,
            l.ss_wc_ms.median(),
            if l.ss_tnap_ms.is_empty() {
                "not run".to_string()
            } else {
                format!("{:.0}", l.ss_tnap_ms.median())
            },
            l.node_ms.median()
        );
    }
    for l in &sc.levels {
        if let Some(e) = &l.ls_error {
            let _ = writeln!(s, "\nAt {} sockets `cwatch ls` failed: {e}", l.sockets);
        }
    }
    if let Some(why) = &sc.stopped {
        let _ = writeln!(s, "\nThe run stopped early: {why}");
    }
    let _ = writeln!(s, "\n![cost against socket count](scale.png)");
}
