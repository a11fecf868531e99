//! Section 4, detection latency: from the kernel transition (a peer closing
//! a loopback connection, which moves our end into CLOSE_WAIT at once) to the
//! gauge `cwatch_process_close_wait_sockets{pid}` moving in /metrics, polled
//! every millisecond on a keep-alive connection. Includes the poll interval
//! and one command round trip to the `cwatch-load` server (microseconds).
use std::{
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

/// Milliseconds per trial.
pub fn run(plan: &Plan, bins: &Bins) -> anyhow::Result<Samples> {
    let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
    let mut samples = Samples::default();
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
        loop {
            let scrape = Scrape::parse(&daemon.metrics()?)?;
            let seen = scrape
                .find("cwatch_process_close_wait_sockets", &[("pid", &pid)])
                .map(|s| s.value)
                .sum::<f64>();
            if seen >= 1.0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("trial {trial}: the gauge did not move within 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        samples.push(ms);
        server.expect("closed", Duration::from_secs(30))?;
        drop(client);
        drop(server);
    }
    daemon.stop()?;
    eprintln!(
        "bench: detection latency p50 {:.1} ms, max {:.1} ms",
        samples.median(),
        samples.max()
    );
    Ok(samples)
}
