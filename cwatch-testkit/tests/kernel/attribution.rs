//! Every CLOSE_WAIT socket gets its holders (pid, comm, fd), checked against
//! `ss -tnep`: outbound, inbound (accepted), unaccepted (still in a
//! listener's queue), shared by fork and dup; counted once under the lowest
//! live pid (bursts: `burst.rs`).
use std::{collections::BTreeSet, net::TcpListener, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, ss, wait_for};
use serde_json::Value;

use crate::common::{free_port_on, serial};

/// (pid, fd) pairs `ss` shows for the CLOSE_WAIT socket `cookie`.
fn ss_holders(cookie: u64) -> BTreeSet<(u64, u64)> {
    ss::close_wait()
        .unwrap()
        .into_iter()
        .filter(|s| s.cookie == cookie)
        .flat_map(|s| s.users.into_iter().map(|u| (u.pid as u64, u.fd as u64)))
        .collect()
}

fn api_holders(sock: &Value) -> BTreeSet<(u64, u64)> {
    sock["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| Some((h["pid"].as_u64()?, h["fd"].as_u64()?)))
        .collect()
}

/// Waits until every API socket matching `pick` has the holders `ss` shows
/// (and there are `n` of them); returns them.
fn settled(daemon: &Daemon, n: usize, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    wait_for("API holders = ss holders", Duration::from_secs(20), || {
        let socks: Vec<Value> = daemon
            .sockets()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| s["state"] == "CLOSE_WAIT" && pick(s))
            .collect();
        if socks.len() != n {
            return Err(format!("{} sockets, want {n}", socks.len()));
        }
        for s in &socks {
            let cookie = s["cookie"].as_u64().unwrap();
            let (api, truth) = (api_holders(s), ss_holders(cookie));
            if api != truth {
                return Err(format!("cookie {cookie}: api {api:?} ss {truth:?}"));
            }
        }
        Ok(socks)
    })
    .unwrap()
}

fn process_gauge(daemon: &Daemon, pid: u32) -> Option<f64> {
    let m = daemon.metrics().unwrap();
    m.find(
        "cwatch_process_close_wait_sockets",
        &[("pid", &pid.to_string())],
    )
    .map(|s| s.value)
    .next()
}

#[test]
fn outbound_inbound_and_unaccepted_sockets_have_holders() {
    let _serial = serial();
    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let port = free_port_on(&["127.0.4.1", "127.0.4.2"]);
    let (out_addr, in_addr) = (format!("127.0.4.1:{port}"), format!("127.0.4.2:{port}"));
    let mut server = Load::server(&[out_addr.clone(), in_addr.clone()]).unwrap();
    // Outbound: the server closes, our client never does.
    let outbound = Load::client("cw-outbound", &[(out_addr.clone(), 3)], "leak").unwrap();
    // Inbound: the client closes, the server (holding the accepted sockets) never does.
    let mut inbound_peer = Load::client("cw-inpeer", &[(in_addr.clone(), 4)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {in_addr} 4"), "accepted")
        .unwrap();
    server.ask(&format!("close {out_addr}"), "closed").unwrap();
    inbound_peer.ask("close-all", "closed").unwrap();
    // Unaccepted: a listener (ours) that never calls accept().
    let listener = TcpListener::bind("127.0.4.3:0").unwrap();
    let queued = listener.local_addr().unwrap().to_string();
    let mut queued_peer = Load::client("cw-qpeer", &[(queued.clone(), 2)], "leak").unwrap();
    queued_peer.ask("close-all", "closed").unwrap();

    let out = settled(&daemon, 3, |s| {
        s["peer_port"] == port && s["peer_addr"] == "127.0.4.1"
    });
    for s in &out {
        assert_eq!(s["direction"], "outbound");
        assert_eq!(s["pid"], outbound.pid);
        assert_eq!(s["comm"], "cw-outbound");
        assert!(s["fd"].is_u64(), "{s}");
    }
    let inb = settled(&daemon, 4, |s| {
        s["local_addr"] == "127.0.4.2" && s["local_port"] == port
    });
    for s in &inb {
        assert_eq!(s["direction"], "inbound", "{s}");
        assert_eq!(s["pid"], server.pid);
        assert!(s["fd"].is_u64(), "{s}");
    }
    let me = std::process::id();
    let queued_port = listener.local_addr().unwrap().port();
    let unacc = settled(&daemon, 2, |s| s["local_port"] == queued_port);
    for s in &unacc {
        assert_eq!(s["direction"], "unaccepted", "{s}");
        assert_eq!(s["pid"], me, "attributed to the listening process");
        assert_eq!(s["fd"], Value::Null, "no fd: nobody accepted it");
    }
    assert_eq!(process_gauge(&daemon, outbound.pid), Some(3.0));
    assert_eq!(process_gauge(&daemon, server.pid), Some(4.0));
    let m = daemon.metrics().unwrap();
    assert_eq!(
        m.get(
            "cwatch_peer_close_wait_sockets",
            &[("peer_addr", "127.0.4.1"), ("peer_port", &port.to_string())]
        ),
        Some(3.0)
    );
    drop(listener);
}

#[test]
fn fork_and_dup_holders_are_listed_and_counted_once() {
    let _serial = serial();
    let daemon = Daemon::start(&[
        "--leak-after",
        "1h",
        "--holders-refresh",
        "300ms",
        "--reconcile-interval",
        "1s",
    ])
    .unwrap();
    let port = free_port_on(&["127.0.4.4"]);
    let inst = format!("127.0.4.4:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let mut parent = Load::client("cw-forker", &[(inst.clone(), 2)], "leak").unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    settled(&daemon, 2, |s| s["peer_port"] == port);

    parent.ask("dup-all", "duped 2").unwrap();
    let child: u32 = parent
        .ask("fork", "forked")
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let _reap = KillOnDrop(child);
    let socks = settled(&daemon, 2, |s| s["peer_port"] == port);
    for s in &socks {
        let pids: BTreeSet<u64> = api_holders(s).iter().map(|h| h.0).collect();
        assert_eq!(
            pids,
            BTreeSet::from([parent.pid as u64, child as u64]),
            "{s}"
        );
        assert_eq!(api_holders(s).len(), 4, "two fds in each process: {s}");
    }
    let lowest = parent.pid.min(child);
    assert_eq!(
        process_gauge(&daemon, lowest),
        Some(2.0),
        "counted once, under the lowest pid"
    );
    assert_eq!(process_gauge(&daemon, parent.pid.max(child)), None);

    // The parent dies: the child still holds both sockets in CLOSE_WAIT.
    let parent_pid = parent.pid;
    drop(parent);
    let socks = settled(&daemon, 2, |s| s["peer_port"] == port);
    for s in &socks {
        assert_eq!(s["pid"], child, "{s}");
    }
    assert_eq!(process_gauge(&daemon, child), Some(2.0));
    assert_eq!(process_gauge(&daemon, parent_pid), None);

    // The last holder dies: the sockets close and leave every gauge.
    drop(_reap);
    wait_for("sockets gone", Duration::from_secs(10), || {
        let left = daemon.sockets().map_err(|e| e.to_string())?;
        match left.iter().filter(|s| s["peer_port"] == port).count() {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        }
    })
    .unwrap();
    assert_eq!(process_gauge(&daemon, child), None);
}

/// SIGKILLs a pid we forked, when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
