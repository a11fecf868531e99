//! Every CLOSE_WAIT socket gets its holders (pid, comm, fd), checked against
//! `ss -tnep`: outbound, inbound (accepted), unaccepted (still in a
//! listener's queue), shared by fork and dup; counted once under the lowest
//! live pid; and a burst is attributed without walking /proc.
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

#[test]
fn a_burst_is_attributed_without_walking_proc() {
    let _serial = serial();
    const N: usize = 360;
    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let port = free_port_on(&["127.0.4.5"]);
    let inst = format!("127.0.4.5:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let client = Load::client("cw-burst", &[(inst.clone(), N)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} {N}"), "accepted")
        .unwrap();
    let scans = |d: &Daemon| {
        let m = d.metrics().unwrap();
        let get = |kind| {
            m.get("cwatch_procfs_scans_total", &[("kind", kind)])
                .unwrap_or(0.0)
        };
        (get("walk"), get("process"))
    };
    let (walks0, procs0) = scans(&daemon);
    let processes_on_host = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count();
    let strace = std::process::Command::new("strace")
        .args([
            "-f",
            "-c",
            "-U",
            "name,calls",
            "-e",
            "trace=getdents64,readlinkat,readlink",
            "-p",
            &daemon.pid.to_string(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace (installed by cargo xtask setup)");
    std::thread::sleep(Duration::from_millis(500));
    server.ask(&format!("close {inst}"), "closed").unwrap();
    let socks = settled(&daemon, N, |s| s["peer_port"] == port);
    assert!(
        socks
            .iter()
            .all(|s| s["pid"] == client.pid && s["fd"].is_u64())
    );
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(strace.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    );
    let out = strace.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    let calls = |name: &str| -> u64 {
        report
            .lines()
            .filter(|l| l.split_whitespace().any(|f| f == name))
            .filter_map(|l| l.split_whitespace().find_map(|f| f.parse::<u64>().ok()))
            .sum()
    };
    let (walks1, procs1) = scans(&daemon);
    // Other sockets of a busy host may, once in a while, be missing from
    // their candidates long enough to justify one walk; a walk per event
    // (or per socket of the burst) is what must never happen.
    assert!(
        walks1 - walks0 <= 1.0,
        "{} walks of /proc for one burst",
        walks1 - walks0
    );
    // Each pass over the pending sockets scans the hint's family (here the
    // server or the client, no children); how many passes a burst spans
    // depends on how fast the host applies it. A scan per socket would be
    // N scans, a walk one per process on the host.
    assert!(
        procs1 - procs0 <= (N / 16) as f64,
        "scanned {} processes for one burst of {N} ({processes_on_host} processes on the host)",
        procs1 - procs0
    );
    if walks1 == walks0 {
        // One scan of the client's fd table costs about N readlinks; a walk
        // would read every process's table.
        let readlinks = calls("readlinkat") + calls("readlink");
        assert!(
            readlinks < (4 * N) as u64,
            "{readlinks} readlinks for {N} sockets ({processes_on_host} processes on the host):\n{report}"
        );
        assert!(calls("getdents64") < processes_on_host as u64, "{report}");
    }
}
