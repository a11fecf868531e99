//! True from the first second: sockets already in CLOSE_WAIT when cwatch
//! starts are found (sock_diag) with their holders and flagged
//! `age_estimated`; a restart, even after SIGKILL, keeps true ages through
//! the pinned maps; pins of another layout are rebuilt.
use std::{path::PathBuf, process::Command, time::Duration};

use cwatch_testkit::{
    daemon::{Daemon, private_pin_dir},
    wait_for,
};
use rustix::process::Signal;
use serde_json::Value;

use crate::common::{leak_on, serial, ss_to_port};

/// Removes a pin directory when dropped.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn to_port(daemon: &Daemon, port: u16, n: usize) -> Vec<Value> {
    wait_for("API sockets", Duration::from_secs(20), || {
        let socks: Vec<Value> = daemon
            .sockets()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| s["peer_port"] == port && s["fd"].is_u64())
            .collect();
        if socks.len() == n {
            Ok(socks)
        } else {
            Err(format!("{} of {n}", socks.len()))
        }
    })
    .unwrap()
}

#[test]
fn sockets_leaked_before_start_are_found_with_estimated_ages() {
    let _serial = serial();
    let (_server, mut client, port) = leak_on("127.0.6.1", "cw-before", 3);
    std::thread::sleep(Duration::from_millis(1500));
    let daemon = Daemon::start(&["--leak-after", "1s"]).unwrap();
    // Ready means found: the first answer already has them.
    let socks: Vec<Value> = daemon
        .sockets()
        .unwrap()
        .into_iter()
        .filter(|s| s["peer_port"] == port)
        .collect();
    assert_eq!(socks.len(), 3, "found before /healthz said ready");
    let truth = ss_to_port(port);
    for s in &socks {
        assert_eq!(s["age_estimated"], true);
        assert_eq!(s["pid"], client.pid);
        let t = truth
            .iter()
            .find(|t| t.cookie == s["cookie"])
            .expect("same cookie as ss");
        assert_eq!(s["fd"], t.users[0].fd);
        let age = s["age_seconds"].as_f64().unwrap();
        assert!(age >= 1.0, "estimated from the last ACK, not 'now': {age}");
        assert_eq!(s["leaked"], true);
    }
    let m = daemon.metrics().unwrap();
    let count0 = m
        .scalar("cwatch_close_wait_duration_seconds_count")
        .unwrap_or(0.0);
    let closed0 = m.scalar("cwatch_close_wait_closed_total").unwrap_or(0.0);
    client.ask("close-all", "closed").unwrap();
    let m = wait_for("closes counted", Duration::from_secs(5), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        if m.scalar("cwatch_close_wait_closed_total").unwrap_or(0.0) >= closed0 + 3.0 {
            Ok(m)
        } else {
            Err("no".into())
        }
    })
    .unwrap();
    assert_eq!(
        m.scalar("cwatch_close_wait_duration_seconds_count")
            .unwrap_or(0.0),
        count0,
        "estimated starts stay out of the histogram"
    );
}

#[test]
fn restart_after_sigkill_keeps_true_ages() {
    let _serial = serial();
    let pins = Pins(private_pin_dir());
    let dir = pins.0.display().to_string();
    let daemon = Daemon::start(&["--pin-dir", &dir]).unwrap();
    let (_s1, _c1, port) = leak_on("127.0.6.2", "cw-kept", 2);
    let before = to_port(&daemon, port, 2);
    assert!(before.iter().all(|s| s["age_estimated"] == false));
    daemon.signal(Signal::KILL).unwrap();
    daemon.wait_exit(Duration::from_secs(10)).unwrap();
    // While no daemon runs, another leak starts.
    let (_s2, _c2, port2) = leak_on("127.0.6.3", "cw-unseen", 1);
    std::thread::sleep(Duration::from_millis(500));
    let daemon = Daemon::start(&["--pin-dir", &dir]).unwrap();
    let after = to_port(&daemon, port, 2);
    for s in &after {
        let old = before
            .iter()
            .find(|b| b["cookie"] == s["cookie"])
            .expect("same sockets");
        assert_eq!(
            s["age_estimated"], false,
            "the pinned map kept the true start: {s}"
        );
        assert!(s["age_seconds"].as_f64().unwrap() > old["age_seconds"].as_f64().unwrap());
    }
    let unseen = to_port(&daemon, port2, 1);
    assert_eq!(
        unseen[0]["age_estimated"], true,
        "started while no daemon ran"
    );
    drop(daemon);
}

#[test]
fn pins_of_another_layout_are_rebuilt() {
    let _serial = serial();
    let pins = Pins(private_pin_dir());
    std::fs::create_dir_all(&pins.0).unwrap();
    let stale = pins.0.join("CLOSE_WAIT");
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&stale)
        .args([
            "type",
            "hash",
            "key",
            "8",
            "value",
            "4",
            "entries",
            "16",
            "name",
            "CLOSE_WAIT",
        ])
        .status()
        .unwrap();
    assert!(created.success(), "bpftool map create");
    let daemon = Daemon::start(&["--pin-dir", &pins.0.display().to_string()]).unwrap();
    assert!(
        daemon.log().contains("removing it and starting afresh"),
        "log:\n{}",
        daemon.log()
    );
    let (_s, _c, port) = leak_on("127.0.6.4", "cw-rebuilt", 2);
    to_port(&daemon, port, 2);
}

/// Sockets the start-up pass found (already in CLOSE_WAIT before cwatch ran)
/// stay what they are through restarts: outbound, their per-peer series
/// under the real peer port, their ages estimated — after SIGKILL and after
/// SIGTERM alike (the records written back to the pinned map keep the
/// owner, the direction and the estimate).
#[test]
fn found_sockets_stay_outbound_and_estimated_across_restarts() {
    let _serial = serial();
    let pins = Pins(private_pin_dir());
    let dir = pins.0.display().to_string();
    let (_server, client, port) = leak_on("127.0.2.1", "cw-found", 50);
    let check = |daemon: &Daemon, when: &str| -> Vec<Value> {
        let socks = to_port(daemon, port, 50);
        for s in &socks {
            assert_eq!(s["direction"], "outbound", "{when}: {s}");
            assert_eq!(s["age_estimated"], true, "{when}: {s}");
            assert_eq!(s["pid"], client.pid, "{when}: {s}");
        }
        let m = daemon.metrics().unwrap();
        let port_label = port.to_string();
        let peer = [
            ("peer_addr", "127.0.2.1"),
            ("peer_port", port_label.as_str()),
        ];
        assert_eq!(
            m.get("cwatch_peer_close_wait_sockets", &peer),
            Some(50.0),
            "{when}: the real peer's series"
        );
        let star = [("peer_addr", "127.0.2.1"), ("peer_port", "*")];
        assert_eq!(
            m.get("cwatch_peer_close_wait_sockets", &star),
            None,
            "{when}"
        );
        socks
    };
    let daemon = Daemon::start(&["--pin-dir", &dir]).unwrap();
    let first = check(&daemon, "found at start");
    daemon.signal(Signal::KILL).unwrap();
    daemon.wait_exit(Duration::from_secs(10)).unwrap();
    let daemon = Daemon::start(&["--pin-dir", &dir]).unwrap();
    let second = check(&daemon, "after SIGKILL");
    for s in &second {
        let old = first
            .iter()
            .find(|f| f["cookie"] == s["cookie"])
            .expect("the same sockets");
        assert!(
            s["age_seconds"].as_f64().unwrap() >= old["age_seconds"].as_f64().unwrap(),
            "a restart never makes a leak look younger: {s} vs {old}"
        );
    }
    daemon.stop().unwrap();
    let daemon = Daemon::start(&["--pin-dir", &dir]).unwrap();
    check(&daemon, "after SIGTERM");
}
