//! Detection latency: from the kernel transition (a peer closing a loopback
//! connection, which moves our end into CLOSE_WAIT at once) to the gauges
//! moving in /metrics — the peer's `cwatch_peer_close_wait_sockets` (the
//! socket is tracked) and the client's `cwatch_process_close_wait_sockets
//! {pid}` (its owner is known too) — polled on a keep-alive connection.
//! Includes the poll interval and one command round trip to the
//! `cwatch-load` server (microseconds).
use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use cwatch_testkit::prom::Scrape;

use super::{
    Plan,
    daemon::BenchDaemon,
    procs::{Bins, Helper},
    stats::Samples,
};

/// Milliseconds per trial, to each gauge.
#[derive(Debug, Default)]
pub struct Latency {
    /// `cwatch_peer_close_wait_sockets` of the trial's peer: the socket is
    /// tracked.
    pub peer: Samples,
    /// `cwatch_process_close_wait_sockets{pid}` of the client: its owner is
    /// known too.
    pub owner: Samples,
}

pub fn run(plan: &Plan, bins: &Bins) -> anyhow::Result<Latency> {
    let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
    daemon.settle()?;
    let mut out = Latency::default();
    for trial in 0..plan.latency_trials {
        // `close` shuts the listener too: one server per trial.
        let mut server = Helper::spawn(
            Command::new(&bins.load).args(["server", "--listen", "127.0.0.1:0"]),
            "cwatch-load server",
        )?;
        let line = server.expect("listening", Duration::from_secs(30))?;
        let addr = line
            .split_whitespace()
            .nth(1)
            .context("no address on the listening line")?
            .to_string();
        let port = addr.rsplit(':').next().unwrap_or_default().to_string();
        server.expect("ready", Duration::from_secs(30))?;
        let mut client = Helper::spawn(
            Command::new(&bins.load).args([
                "client",
                "--comm",
                "cwbench-lat",
                "--connect",
                &addr,
                "--count",
                "1",
            ]),
            "cwatch-load client",
        )?;
        client.expect("connected", Duration::from_secs(30))?;
        let pid = client.pid().to_string();
        let started = Instant::now();
        server.send(&format!("close {addr}"))?;
        let (mut peer, mut owner) = (None, None);
        while owner.is_none() || peer.is_none() {
            let scrape = Scrape::parse(&daemon.metrics()?)?;
            let t = started.elapsed();
            let moved = |name: &str, labels: &[(&str, &str)]| {
                scrape.find(name, labels).map(|s| s.value).sum::<f64>() >= 1.0
            };
            if peer.is_none()
                && moved(
                    "cwatch_peer_close_wait_sockets",
                    &[("peer_addr", "127.0.0.1"), ("peer_port", &port)],
                )
            {
                peer = Some(t);
            }
            if owner.is_none() && moved("cwatch_process_close_wait_sockets", &[("pid", &pid)]) {
                owner = Some(t);
            }
            if t > Duration::from_secs(30) {
                bail!(
                    "trial {trial}: the gauges did not move within 30 s (peer {peer:?}, owner {owner:?})"
                );
            }
            // Every ms at first; past 300 ms, 10 ms is resolution enough
            // and spares the daemon thousands of scrapes.
            let every = if t < Duration::from_millis(300) {
                1
            } else {
                10
            };
            std::thread::sleep(Duration::from_millis(every));
        }
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        out.peer.push(ms(peer));
        out.owner.push(ms(owner));
        server.expect("closed", Duration::from_secs(30))?;
        drop(client);
        drop(server);
    }
    daemon.stop()?;
    eprintln!(
        "bench: detection latency: peer gauge p50 {:.1} ms, max {:.1} ms; owner's gauge p50 {:.1} ms, max {:.1} ms",
        out.peer.median(),
        out.peer.max(),
        out.owner.median(),
        out.owner.max()
    );
    Ok(out)
}

/// The section of RESULTS.md.
pub fn render(l: &Latency, s: &mut String) {
    let _ = writeln!(
        s,
        "From the peer's close (the transition into CLOSE_WAIT) to the gauges moving in \
         /metrics, polled every ms (every 10 ms past 300 ms), a daemon with default settings \
         (`--track-after`: a socket is tracked once it has stayed that long; the client is \
         not on the watch list). {} trials.\n\n\
         | gauge | median (ms) | max (ms) |\n|---|---|---|\n\
         | `cwatch_peer_close_wait_sockets` (tracked) | {:.1} | {:.1} |\n\
         | `cwatch_process_close_wait_sockets{{pid}}` (owner known) | {:.1} | {:.1} |",
        l.owner.len(),
        l.peer.median(),
        l.peer.max(),
        l.owner.median(),
        l.owner.max()
    );
}
