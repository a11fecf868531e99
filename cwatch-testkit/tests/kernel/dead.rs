//! Sockets the kernel closed (`ss -K`, as a keepalive timeout or reset
//! would) or that were shut down without close() leave CLOSE_WAIT but are
//! still leaked fds: `cwatch_process_dead_sockets_held` counts them until
//! the last fd is closed (`tcp_destroy_sock`).
use std::{process::Command, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for};

use crate::common::{free_port_on, serial, ss_to_port};

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
