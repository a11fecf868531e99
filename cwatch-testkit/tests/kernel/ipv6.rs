//! IPv6 on ::1, and IPv4 reached through an AF_INET6 socket (an IPv4-mapped
//! address), which cwatch must show as plain IPv4.
use std::time::Duration;

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for};

use crate::common::{api_to_port, free_port_on, serial, ss_to_port};

#[test]
fn ipv6_loopback_and_mapped_ipv4() {
    let _serial = serial();
    const N: usize = 40;
    let port = free_port_on(&["::1", "127.0.3.1"]);
    let v6 = format!("[::1]:{port}");
    let v4 = format!("127.0.3.1:{port}");
    let mapped = format!("[::ffff:127.0.3.1]:{port}");
    let daemon = Daemon::start(&[]).unwrap();
    let mut server = Load::server(&[v6.clone(), v4.clone()]).unwrap();
    let client = Load::client("v6-leaker", &[(v6.clone(), N), (mapped, N)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {v6} {N}"), "accepted")
        .unwrap();
    server
        .ask(&format!("wait-accepted {v4} {N}"), "accepted")
        .unwrap();
    server.ask(&format!("close {v6}"), "closed").unwrap();
    server.ask(&format!("close {v4}"), "closed").unwrap();

    let truth = wait_for("ss shows both families", Duration::from_secs(5), || {
        let s = ss_to_port(port);
        if s.len() == 2 * N {
            Ok(s)
        } else {
            Err(format!("{} sockets", s.len()))
        }
    })
    .unwrap();
    assert_eq!(
        truth
            .iter()
            .filter(|s| s.peer.ip().to_string() == "::ffff:127.0.3.1")
            .count(),
        N,
        "ss shows the mapped form"
    );

    let pid = client.pid.to_string();
    let m = wait_for("per-peer gauges", Duration::from_secs(1), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        let port = port.to_string();
        let a = m.get(
            "cwatch_peer_close_wait_sockets",
            &[("peer_addr", "::1"), ("peer_port", &port)],
        );
        let b = m.get(
            "cwatch_peer_close_wait_sockets",
            &[("peer_addr", "127.0.3.1"), ("peer_port", &port)],
        );
        if a == Some(N as f64) && b == Some(N as f64) {
            Ok(m)
        } else {
            Err(format!("::1={a:?} 127.0.3.1={b:?}"))
        }
    })
    .unwrap();
    assert_eq!(
        m.get(
            "cwatch_process_close_wait_sockets",
            &[("pid", &pid), ("comm", "v6-leaker")]
        ),
        Some(2.0 * N as f64)
    );
    assert!(
        !m.text.contains("::ffff:"),
        "a mapped address leaked into the labels"
    );

    let api = api_to_port(&daemon.sockets().unwrap(), port);
    assert_eq!(api.len(), 2 * N);
    let v6_entries = api
        .iter()
        .filter(|s| s["peer_addr"] == "::1" && s["local_addr"] == "::1")
        .count();
    let v4_entries = api.iter().filter(|s| s["peer_addr"] == "127.0.3.1").count();
    assert_eq!((v6_entries, v4_entries), (N, N));
}
