//! kill -9 in the middle of a churn of thousands of connections a second
//! and a growing leak, then a start on the same pin directory: no socket
//! lost, none counted twice (every per-process and per-peer gauge of the
//! leak equals `ss`, the API lists each of its cookies once), ages kept
//! (each socket's age after the restart is at least its age before the kill
//! plus the time between the two readings, downtime included), and the
//! churn's sockets leave nothing behind.
use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cwatch_testkit::{
    daemon::{Daemon, private_pin_dir},
    load::Load,
    ss, wait_for, workspace_binary,
};
use rustix::process::Signal;
use serde_json::Value;

use crate::common::{free_port_on, serial, ss_to_port};

/// Removes the test's pin directory when dropped.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `cwatch-churn` run in the background, killed by pid when dropped.
struct Churn(Option<Child>);

impl Churn {
    fn start(secs: u32) -> Churn {
        let bin = workspace_binary("CWATCH_CHURN_BIN", "cwatch-churn").unwrap();
        let child = Command::new(bin)
            .args(["--seconds", &secs.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Churn(Some(child))
    }

    /// Waits for the end of the run; its connections.
    fn finish(mut self) -> u64 {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        let run = cwatch_testkit::churn::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        run.conns
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its clients' TIME_WAIT entries hold most ephemeral ports for a
        // minute, which makes every connect() of the host slow (the next
        // test's too): wait for them to go (bounded; cleanup, not a check).
        let _ = wait_for(
            "the churn's TIME_WAIT gone",
            Duration::from_secs(90),
            || {
                let out = Command::new("ss")
                    .args(["-tanH", "state", "time-wait", "dst", "127.77.0.0/24"])
                    .output()
                    .map_err(|e| e.to_string())?;
                let n = out.stdout.iter().filter(|&&b| b == b'\n').count();
                if n < 1000 {
                    Ok(())
                } else {
                    Err(format!("{n}"))
                }
            },
        );
    }
}

const STEPS: usize = 6;
const PER_STEP: usize = 150;

/// The leak's sockets in the API: cookie → JSON entry. Fails on a cookie
/// listed twice.
fn leak_in_api(daemon: &Daemon, port: u16) -> Result<BTreeMap<u64, Value>, String> {
    let mut out = BTreeMap::new();
    for s in daemon.sockets().map_err(|e| e.to_string())? {
        if s["peer_port"] == port && s["state"] == "CLOSE_WAIT" {
            let cookie = s["cookie"].as_u64().ok_or("no cookie")?;
            if out.insert(cookie, s).is_some() {
                return Err(format!("cookie {cookie} listed twice"));
            }
        }
    }
    Ok(out)
}

/// Waits until the API, the per-process and the per-peer gauges all show
/// exactly the leak `ss` shows (same cookies, each once); returns the API's
/// entries, read when they did.
fn equal_to_ss(
    daemon: &Daemon,
    port: u16,
    clients: &[Load],
    ips: &[String],
) -> BTreeMap<u64, Value> {
    let port_label = port.to_string();
    wait_for("leak: API and gauges = ss", Duration::from_secs(60), || {
        let truth = ss_to_port(port);
        let cookies: HashSet<u64> = truth.iter().map(|s| s.cookie).collect();
        let api = leak_in_api(daemon, port)?;
        let listed: HashSet<u64> = api.keys().copied().collect();
        if listed != cookies {
            return Err(format!(
                "api {} cookies, ss {}",
                listed.len(),
                cookies.len()
            ));
        }
        // The API and the gauges are read one after the other: both must
        // know every owner.
        let unowned = api.values().filter(|s| !s["pid"].is_u64()).count();
        if unowned > 0 {
            return Err(format!("{unowned} sockets without an owner in the API"));
        }
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        for c in clients {
            let held = truth
                .iter()
                .filter(|s| s.users.iter().any(|u| u.pid == c.pid))
                .count();
            let pid = c.pid.to_string();
            let got = m
                .find("cwatch_process_close_wait_sockets", &[("pid", &pid)])
                .map(|s| s.value)
                .sum::<f64>();
            if got != held as f64 {
                return Err(format!("pid {pid}: gauge {got}, ss {held}"));
            }
        }
        for ip in ips {
            let to_peer = truth
                .iter()
                .filter(|s| s.peer.ip().to_string() == *ip)
                .count();
            let got = m
                .get(
                    "cwatch_peer_close_wait_sockets",
                    &[("peer_addr", ip), ("peer_port", &port_label)],
                )
                .unwrap_or(0.0);
            if got != to_peer as f64 {
                return Err(format!("peer {ip}: gauge {got}, ss {to_peer}"));
            }
        }
        Ok(api)
    })
    .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", daemon.log()))
}

#[test]
fn kill_9_mid_churn_loses_nothing_counts_nothing_twice_and_keeps_ages() {
    let _serial = serial();
    let pins = Pins(private_pin_dir());
    let dir = pins.0.display().to_string();
    let args = [
        "--pin-dir",
        &dir,
        "--leak-after",
        "1h",
        "--reconcile-interval",
        "5s",
    ];
    let ips: Vec<String> = (1..=STEPS).map(|i| format!("127.0.12.{i}")).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let port = free_port_on(&ip_refs);
    let insts: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    // Every leak connection is made before the churn starts (a connect
    // under churn can wait seconds for a retransmitted SYN).
    let mut server = Load::server(&insts).unwrap();
    let clients: Vec<Load> = insts
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let c = Load::client(
                &format!("cw-crash-{i}"),
                &[(inst.clone(), PER_STEP)],
                "leak",
            )
            .unwrap();
            server
                .ask(&format!("wait-accepted {inst} {PER_STEP}"), "accepted")
                .unwrap();
            c
        })
        .collect();
    let mut grow = |step: usize| {
        server
            .ask(&format!("close {}", insts[step]), "closed")
            .unwrap();
    };

    let daemon = Daemon::start(&args).unwrap();
    let churn = Churn::start(20);
    grow(0);
    grow(1);
    let before = equal_to_ss(&daemon, port, &clients, &ips);
    let read_before = Instant::now();
    assert_eq!(before.len(), 2 * PER_STEP);
    assert!(before.values().all(|s| s["age_estimated"] == false));
    // The leak grows while the daemon dies: these enter CLOSE_WAIT around
    // the kill (some in YOUNG, some after the programs are gone).
    grow(2);
    daemon.signal(Signal::KILL).unwrap();
    daemon.wait_exit(Duration::from_secs(10)).unwrap();
    grow(3);
    std::thread::sleep(Duration::from_millis(500));

    let daemon = Daemon::start(&args).unwrap();
    grow(4);
    // The readings below come after this: at least this long after the
    // one above, the downtime included.
    let elapsed = read_before.elapsed().as_secs_f64();
    let after = equal_to_ss(&daemon, port, &clients, &ips);
    assert_eq!(after.len(), 5 * PER_STEP, "no socket lost");
    for (cookie, old) in &before {
        let new = after
            .get(cookie)
            .expect("a socket tracked before is tracked after");
        let (a0, a1) = (
            old["age_seconds"].as_f64().unwrap(),
            new["age_seconds"].as_f64().unwrap(),
        );
        assert_eq!(
            new["age_estimated"], false,
            "the pinned start is exact: {new}"
        );
        assert!(
            a1 + 0.001 >= a0 + elapsed,
            "age kept across the kill: {a0} before, {a1} after, {elapsed} s between the readings"
        );
        assert_eq!(new["pid"], old["pid"]);
        assert_eq!(new["direction"], old["direction"]);
    }
    let kept = before
        .iter()
        .map(|(c, old)| {
            after[c]["age_seconds"].as_f64().unwrap() - old["age_seconds"].as_f64().unwrap()
        })
        .fold(f64::INFINITY, f64::min);
    eprintln!("{elapsed:.2} s between the readings, the least age gained {kept:.2} s");
    let churn_pid = churn.pid();
    let conns = churn.finish();
    eprintln!("churn: {conns} connections in 20 s");
    assert!(
        conns >= 20_000,
        "thousands of connections a second: {conns} in 20 s"
    );
    grow(5);
    equal_to_ss(&daemon, port, &clients, &ips);
    // The churn's own CLOSE_WAIT sockets were short: none is left counted.
    wait_for(
        "churn counted as ss shows it",
        Duration::from_secs(30),
        || {
            let held = ss::close_wait()
                .map_err(|e| e.to_string())?
                .iter()
                .filter(|s| s.users.iter().any(|u| u.pid == churn_pid))
                .count();
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            let got: f64 = m
                .find(
                    "cwatch_process_close_wait_sockets",
                    &[("pid", &churn_pid.to_string())],
                )
                .map(|s| s.value)
                .sum();
            if got == held as f64 {
                Ok(())
            } else {
                Err(format!("gauge {got}, ss {held}"))
            }
        },
    )
    .unwrap();
    drop(clients);
}
