//! Sockets the kernel closed (`ss -K`, as a keepalive timeout or reset
//! would) or that were shut down without close() leave CLOSE_WAIT but are
//! still leaked fds: `cwatch_process_dead_sockets_held` counts them until
//! the last fd is closed (`tcp_destroy_sock`). A socket whose last fd was
//! closed is never one, even while the kernel still sends its FIN.
use std::{collections::HashSet, path::Path, process::Command, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, ss, wait_for};

use crate::common::{NetNs, free_port_on, serial, ss_to_port};

fn dead_gauge(daemon: &Daemon, pid: u32) -> Option<f64> {
    daemon
        .metrics()
        .unwrap()
        .find(
            "cwatch_process_dead_sockets_held",
            &[("pid", &pid.to_string())],
        )
        .map(|s| s.value)
        .next()
}

fn wait_dead(daemon: &Daemon, pid: u32, want: Option<f64>) {
    wait_for(
        "dead sockets gauge",
        Duration::from_secs(15),
        || match dead_gauge(daemon, pid) {
            got if got == want => Ok(()),
            got => Err(format!("pid {pid}: {got:?}, want {want:?}")),
        },
    )
    .unwrap();
}

#[test]
fn killed_and_shut_down_sockets_stay_counted_while_held() {
    let _serial = serial();
    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let port = free_port_on(&["127.0.5.1"]);
    let inst = format!("127.0.5.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let mut killed = Load::client("cw-killed", &[(inst.clone(), 2)], "leak").unwrap();
    let mut shut = Load::client("cw-shutwr", &[(inst.clone(), 1)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} 3"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    wait_for(
        "3 in CLOSE_WAIT",
        Duration::from_secs(10),
        || match ss_to_port(port).len() {
            3 => Ok(()),
            n => Err(n.to_string()),
        },
    )
    .unwrap();

    // The kernel kills one of cw-killed's sockets (what a keepalive timeout
    // or a reset does); its fd stays open.
    let victim = ss_to_port(port)
        .into_iter()
        .find(|s| s.users.iter().any(|u| u.pid == killed.pid))
        .unwrap();
    let status = Command::new("ss")
        .args(["-K", "-tn", "state", "close-wait"])
        .arg(format!(
            "sport = :{} and dport = :{port}",
            victim.local.port()
        ))
        .output()
        .unwrap();
    assert!(status.status.success(), "ss -K: {status:?}");
    // cw-shutwr shuts down its socket without closing it: LAST_ACK, then
    // CLOSE once the peer ACKs, fd still open.
    shut.ask("shutdown-all", "shutdown 1").unwrap();

    wait_dead(&daemon, killed.pid, Some(1.0));
    wait_dead(&daemon, shut.pid, Some(1.0));
    let m = daemon.metrics().unwrap();
    assert_eq!(
        m.get(
            "cwatch_process_close_wait_sockets",
            &[("pid", &killed.pid.to_string()), ("comm", "cw-killed")]
        ),
        Some(1.0),
        "the other socket of cw-killed is still in CLOSE_WAIT"
    );
    let api = daemon.sockets().unwrap();
    let dead: Vec<_> = api
        .iter()
        .filter(|s| s["state"] == "CLOSE" && s["peer_port"] == port)
        .collect();
    assert_eq!(dead.len(), 2, "{api:?}");
    assert!(
        dead.iter()
            .any(|s| s["cookie"] == victim.cookie && s["fd"] == victim.users[0].fd)
    );
    assert!(dead.iter().all(|s| s["leaked"] == true));

    // Closing the fds lets the kernel destroy them: the series disappear.
    killed.ask("close-all", "closed").unwrap();
    shut.ask("close-all", "closed").unwrap();
    wait_dead(&daemon, killed.pid, None);
    wait_dead(&daemon, shut.pid, None);
}

/// Keys (socket cookies) of the pinned `LINGER` map in `pin_dir`.
fn linger_cookies(pin_dir: &Path) -> HashSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("LINGER"))
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {out:?}");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .iter()
        .map(|e| match &e["key"] {
            serde_json::Value::Number(n) => n.as_u64().unwrap(),
            // No BTF for the key: little-endian bytes as "0x.." strings.
            serde_json::Value::Array(bytes) => bytes.iter().rev().fold(0u64, |acc, b| {
                let b = b.as_str().unwrap().trim_start_matches("0x");
                (acc << 8) | u64::from_str_radix(b, 16).unwrap()
            }),
            other => panic!("unexpected key {other:?}"),
        })
        .collect()
}

/// The client end is closed while its network namespace's loopback is down:
/// the kernel keeps it in LAST_ACK, retrying its FIN, but no fd holds it any
/// more. The kernel program sees its file released and keeps no `LINGER`
/// record; the daemon counts no dead socket.
#[test]
fn a_closed_socket_still_sending_its_fin_is_not_dead() {
    let _serial = serial();
    let ns = NetNs::new();
    let netns = ns.inode();
    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let pin_dir = daemon.pin_dir.clone().expect("a private pin dir");
    let (server, mut client) = ns.leak(7401, "cw-lastack", 2);
    let ours = || -> Vec<u64> {
        daemon
            .sockets()
            .unwrap()
            .iter()
            .filter(|s| s["netns"] == netns && s["peer_port"] == 7401 && s["state"] != "CLOSE")
            .map(|s| s["cookie"].as_u64().unwrap())
            .collect()
    };
    wait_for("2 in CLOSE_WAIT", Duration::from_secs(10), || {
        match ours().len() {
            2 => Ok(()),
            n => Err(format!(
                "{n} in netns {netns}; all to port 7401: {:?}",
                daemon
                    .sockets()
                    .unwrap()
                    .into_iter()
                    .filter(|s| s["peer_port"] == 7401)
                    .map(|s| (
                        s["netns"] == netns,
                        s["state"] != "CLOSE",
                        s["cookie"].as_u64()
                    ))
                    .collect::<Vec<_>>()
            )),
        }
    })
    .unwrap();
    let cookies: HashSet<u64> = ours().into_iter().collect();

    let ip = |args: &[&str]| {
        let mut cmd = Command::new(ns.exec()[0]);
        cmd.args(&ns.exec()[1..]).args(args);
        let ok = cmd.status().unwrap().success();
        assert!(ok, "{args:?}");
    };
    ip(&["ip", "link", "set", "lo", "down"]);
    client.ask("close-all", "closed").unwrap();
    let in_ns = |state: &str| -> Vec<u64> {
        let mut cmd = Command::new(ns.exec()[0]);
        cmd.args(&ns.exec()[1..])
            .args(["ss", "-tnepH", "state", state, "dport", "= :7401"]);
        let out = cmd.output().unwrap();
        ss::parse(&String::from_utf8_lossy(&out.stdout))
            .unwrap()
            .into_iter()
            .map(|s| s.cookie)
            .collect()
    };
    let last_ack: HashSet<u64> = in_ns("last-ack").into_iter().collect();
    assert_eq!(last_ack, cookies, "closed, FIN not delivered: LAST_ACK");
    // Past the daemon's 1 s grace for dead sockets.
    std::thread::sleep(Duration::from_millis(1500));
    let linger = linger_cookies(&pin_dir);
    assert!(
        cookies.is_disjoint(&linger),
        "released sockets kept in LINGER: {cookies:?} in {linger:?}"
    );
    assert_eq!(dead_gauge(&daemon, client.pid), None);
    assert!(ours().is_empty(), "left CLOSE_WAIT in the table");
    let still: HashSet<u64> = in_ns("last-ack").into_iter().collect();
    assert_eq!(still, cookies, "still in LAST_ACK while we looked");
    drop(client);
    drop(server);
}
