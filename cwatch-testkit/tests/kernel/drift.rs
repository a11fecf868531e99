//! Reconciliation against sock_diag repairs drift and counts it: records
//! deleted from the kernel map behind cwatch's back (bpftool), events
//! dropped because the ring overflowed while the daemon was stopped; and it
//! reaches sockets in other network namespaces.
use std::{process::Command, time::Duration};

use cwatch_testkit::{
    daemon::{Daemon, private_pin_dir},
    load::Load,
    wait_for,
};
use rustix::process::Signal;

use crate::common::{NetNs, free_port_on, serial, ss_to_port};

fn correction(daemon: &Daemon, kind: &str) -> f64 {
    daemon
        .metrics()
        .unwrap()
        .get("cwatch_reconcile_corrections_total", &[("kind", kind)])
        .unwrap_or(0.0)
}

fn gauge(daemon: &Daemon, pid: u32, comm: &str) -> Option<f64> {
    daemon.metrics().unwrap().get(
        "cwatch_process_close_wait_sockets",
        &[("pid", &pid.to_string()), ("comm", comm)],
    )
}

/// Waits until `pid`'s gauge equals what `ss` shows it holds to `port`.
fn gauge_matches_ss(daemon: &Daemon, pid: u32, comm: &str, port: u16, want: usize) {
    wait_for("gauge = ss", Duration::from_secs(20), || {
        let truth = ss_to_port(port)
            .iter()
            .filter(|s| s.users.iter().any(|u| u.pid == pid))
            .count();
        let got = gauge(daemon, pid, comm);
        let want_gauge = (want > 0).then_some(want as f64);
        if truth == want && got == want_gauge {
            Ok(())
        } else {
            Err(format!("ss {truth}, gauge {got:?}, want {want}"))
        }
    })
    .unwrap();
}

fn leak(server: &mut Load, inst: &str, comm: &str, n: usize) -> Load {
    let client = Load::client(comm, &[(inst.to_string(), n)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} {n}"), "accepted")
        .unwrap();
    client
}

#[test]
fn deleted_records_and_dropped_events_are_corrected_and_counted() {
    let _serial = serial();
    let pins = private_pin_dir();
    let _cleanup = RemoveOnDrop(pins.clone());
    let dir = pins.display().to_string();
    let daemon = Daemon::start(&[
        "--pin-dir",
        &dir,
        "--reconcile-interval",
        "2s",
        // The safety net every ten intervals whatever a pass costs (in an
        // emulated VM a pass and its walk cost enough for the default
        // budget to space them past this test's wait).
        "--reconcile-budget",
        "100%",
        "--ring-buffer-size",
        "4096",
        "--leak-after",
        "1h",
    ])
    .unwrap();
    let port = free_port_on(&["127.0.7.1", "127.0.7.2"]);
    let (a_inst, b_inst) = (format!("127.0.7.1:{port}"), format!("127.0.7.2:{port}"));
    let mut server = Load::server(&[a_inst.clone(), b_inst.clone()]).unwrap();
    // 100 sockets tracked (in the CLOSE_WAIT map): their leaves are ring
    // records, more than a 4 KiB ring holds (about 32).
    let mut a = leak(&mut server, &a_inst, "cw-drift-a", 100);
    server.ask(&format!("close {a_inst}"), "closed").unwrap();
    gauge_matches_ss(&daemon, a.pid, "cw-drift-a", port, 100);

    // Delete four records from the pinned kernel map.
    let map = pins.join("CLOSE_WAIT");
    let victims: Vec<u64> = ss_to_port(port).iter().take(4).map(|s| s.cookie).collect();
    let added0 = correction(&daemon, "map_added");
    for cookie in &victims {
        let key: Vec<String> = cookie
            .to_le_bytes()
            .iter()
            .map(|b| format!("0x{b:02x}"))
            .collect();
        let out = Command::new("bpftool")
            .args(["map", "delete", "pinned"])
            .arg(&map)
            .arg("key")
            .args(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool: {out:?}");
    }
    // No event was lost: the safety-net full pass (every 10 intervals of
    // 2 s) finds them.
    wait_for("map records restored", Duration::from_secs(30), || {
        let got = correction(&daemon, "map_added");
        if got >= added0 + 4.0 {
            Ok(())
        } else {
            Err(format!("{got}"))
        }
    })
    .unwrap();
    assert_eq!(
        gauge(&daemon, a.pid, "cw-drift-a"),
        Some(100.0),
        "the gauges never moved"
    );
    let passes = |kind: &str| {
        daemon
            .metrics()
            .unwrap()
            .get("cwatch_reconcile_passes_total", &[("pass", kind)])
            .unwrap_or(0.0)
    };
    assert!(
        passes("skipped") >= 1.0,
        "no event was lost: the passes between full ones are skipped"
    );
    let full0 = passes("full");

    // Stop the daemon, overflow its 4 KiB ring: 100 new leaks (recorded in
    // YOUNG, no ring record: the young scanner finds them after the stop)
    // and 100 closes of tracked sockets (a ring record each).
    let lost0 = daemon
        .metrics()
        .unwrap()
        .scalar("cwatch_events_lost_total")
        .unwrap_or(0.0);
    let (added0, removed0) = (correction(&daemon, "added"), correction(&daemon, "removed"));
    daemon.signal(Signal::STOP).unwrap();
    let b = leak(&mut server, &b_inst, "cw-drift-b", 100);
    server.ask(&format!("close {b_inst}"), "closed").unwrap();
    wait_for("b in CLOSE_WAIT", Duration::from_secs(10), || {
        if ss_to_port(port).len() == 200 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .unwrap();
    a.ask("close-all", "closed").unwrap();
    daemon.signal(Signal::CONT).unwrap();

    gauge_matches_ss(&daemon, b.pid, "cw-drift-b", port, 100);
    gauge_matches_ss(&daemon, a.pid, "cw-drift-a", port, 0);
    let m = daemon.metrics().unwrap();
    assert!(
        m.scalar("cwatch_events_lost_total").unwrap() > lost0,
        "the ring did overflow"
    );
    assert!(
        passes("full") > full0,
        "lost events make the next pass a full one"
    );
    // The leaves the ring had room for were applied; the lost ones were
    // removed by the full pass (the gauges above equal ss).
    assert!(
        correction(&daemon, "removed") > removed0,
        "lost leaves were removed"
    );
    assert_eq!(
        correction(&daemon, "added"),
        added0,
        "nothing was added twice: the new leaks came through YOUNG"
    );
    drop(daemon);
}

/// Removes a pin directory when dropped, also when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn sockets_in_other_network_namespaces_are_found_at_start() {
    let _serial = serial();
    let ns = NetNs::new();
    let inode = ns.inode();
    let (server, client) = ns.leak(7400, "cw-netns", 3);
    std::thread::sleep(Duration::from_millis(300));

    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let socks: Vec<serde_json::Value> = daemon
        .sockets()
        .unwrap()
        .into_iter()
        .filter(|s| s["netns"] == inode && s["peer_port"] == 7400)
        .collect();
    assert_eq!(
        socks.len(),
        3,
        "found in the namespace by the start-up reconciliation"
    );
    assert!(socks.iter().all(|s| s["age_estimated"] == true));
    let client_pid = client.pid;
    wait_for("holders in the namespace", Duration::from_secs(10), || {
        let socks = daemon.sockets().map_err(|e| e.to_string())?;
        let ours: Vec<_> = socks
            .iter()
            .filter(|s| s["netns"] == inode && s["fd"].is_u64())
            .collect();
        if ours.len() == 3 && ours.iter().all(|s| s["pid"] == client_pid) {
            Ok(())
        } else {
            Err(format!("{ours:?}"))
        }
    })
    .unwrap();
    // The host's own sockets to port 7400 are not confused with them.
    assert!(ss_to_port(7400).is_empty());
    drop(client);
    drop(server);
}
