//! Event loss and map limits. The ring at its minimum (4 KiB, about 30
//! events) under 22,000 CLOSE_WAIT transitions from four processes, up and
//! back to zero, live and with the daemon stalled: events are lost and
//! counted, and within one reconcile period every gauge of the test's
//! processes and peers equals `ss` again. `YOUNG` sized down to 64 under
//! bursts of a thousand: the sockets that did not fit are counted, said in
//! at most one log line per interval, the daemon keeps answering, and
//! reconciliation finds them all. (`drift.rs` covers records deleted behind
//! cwatch's back and a ring overflowed by leaves alone.)
use std::time::{Duration, Instant};

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for};
use rustix::process::Signal;

use crate::common::{free_port_on, serial, ss_to_port};

/// One leaking process and the listener it is connected to.
struct Group {
    client: Load,
    id: Id,
}

/// What a group's gauges are looked up by.
#[derive(Clone)]
struct Id {
    pid: u32,
    comm: String,
    peer_ip: String,
}

fn ids<'a>(groups: impl IntoIterator<Item = &'a Group>) -> Vec<Id> {
    groups.into_iter().map(|g| g.id.clone()).collect()
}

/// Every gauge of `groups` equals what `ss` shows for it (a process's and
/// its peer's: each group has a peer address of its own), within `timeout`;
/// returns how long that took.
fn gauges_equal_ss(daemon: &Daemon, port: u16, groups: &[Id], timeout: Duration) -> Duration {
    let start = Instant::now();
    let port_label = port.to_string();
    wait_for("every gauge = ss", timeout, || {
        let truth = ss_to_port(port);
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        let mut wrong = Vec::new();
        for g in groups {
            let held = truth
                .iter()
                .filter(|s| s.users.iter().any(|u| u.pid == g.pid))
                .count();
            let to_peer = truth
                .iter()
                .filter(|s| s.peer.ip().to_string() == g.peer_ip)
                .count();
            let want = |n: usize| (n > 0).then_some(n as f64);
            let pid = g.pid.to_string();
            let process = m.get(
                "cwatch_process_close_wait_sockets",
                &[("pid", &pid), ("comm", &g.comm)],
            );
            let peer = m.get(
                "cwatch_peer_close_wait_sockets",
                &[("peer_addr", &g.peer_ip), ("peer_port", &port_label)],
            );
            if process != want(held) || peer != want(to_peer) {
                wrong.push(format!(
                    "{}: ss {held}/{to_peer}, gauges {process:?}/{peer:?}",
                    g.comm
                ));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\ndaemon log (tail):\n{}", tail(&daemon.log())));
    start.elapsed()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn lost(daemon: &Daemon) -> f64 {
    let m = daemon.metrics().unwrap();
    m.scalar("cwatch_events_lost_total").unwrap_or(0.0)
}

/// `n` connections from a client named `comm` to each listener in `insts`
/// on `server`, accepted: one group per listener.
fn groups(server: &mut Load, insts: &[String], comm: &str, n: usize) -> Vec<Group> {
    insts
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let comm = format!("{comm}{i}");
            let client = Load::client(&comm, &[(inst.clone(), n)], "leak").unwrap();
            server
                .ask(&format!("wait-accepted {inst} {n}"), "accepted")
                .unwrap();
            let peer_ip = inst.rsplit_once(':').unwrap().0.to_string();
            let id = Id {
                pid: client.pid,
                comm,
                peer_ip,
            };
            Group { client, id }
        })
        .collect()
}

/// Sends `command` to every group's client at once, then waits for every
/// reply.
fn all_at_once(groups: &mut [&mut Group], command: &str, reply: &str) {
    for g in groups.iter_mut() {
        g.client.send(command).unwrap();
    }
    for g in groups.iter_mut() {
        g.client.expect(reply, Duration::from_secs(120)).unwrap();
    }
}

const INTERVAL: Duration = Duration::from_secs(5);
/// What a full pass over tens of thousands of sockets may take on a busy
/// two-core machine, beyond the interval.
const PASS: Duration = Duration::from_secs(10);

#[test]
fn a_burst_through_the_smallest_ring_loses_events_and_the_gauges_stay_equal_to_ss() {
    let _serial = serial();
    const N: usize = 5500;
    let ips = [
        "127.0.11.1",
        "127.0.11.2",
        "127.0.11.3",
        "127.0.11.4",
        "127.0.11.5",
    ];
    let port = free_port_on(&ips);
    let insts: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    let daemon = Daemon::start(&[
        "--ring-buffer-size",
        "4096",
        // Room for the whole burst: only the ring is small here.
        "--young-sockets",
        "65536",
        "--reconcile-interval",
        "5s",
        "--leak-after",
        "1h",
    ])
    .unwrap();
    // Two servers (each holds half the accepted sockets: file limits).
    let mut s1 = Load::server(&insts[..2]).unwrap();
    let mut s2 = Load::server(&insts[2..4]).unwrap();
    let mut s3 = Load::server(&insts[4..]).unwrap();
    let mut g = groups(&mut s1, &insts[..2], "cw-loss-", N);
    g.extend(groups(&mut s2, &insts[2..4], "cw-loss-", N));
    let mut late = groups(&mut s3, &insts[4..], "cw-late-", 300).remove(0);
    let lost0 = lost(&daemon);

    // Up: 22,000 sockets of four processes enter CLOSE_WAIT at once.
    for (server, pair) in [(&mut s1, &insts[..2]), (&mut s2, &insts[2..4])] {
        for inst in pair {
            server.send(&format!("close {inst}")).unwrap();
        }
    }
    for server in [&mut s1, &mut s2] {
        for _ in 0..2 {
            server.expect("closed", Duration::from_secs(60)).unwrap();
        }
    }
    let refs = ids(&g);
    let took = gauges_equal_ss(&daemon, port, &refs, Duration::from_secs(60));
    eprintln!("up: gauges = ss after {took:?}");
    assert_eq!(ss_to_port(port).len(), 4 * N, "all in CLOSE_WAIT");

    // Down, live: two processes close 11,000 sockets at once; each was
    // tracked, so each leave is an event for a ring of about 30.
    let (first, second) = g.split_at_mut(2);
    all_at_once(
        &mut first.iter_mut().collect::<Vec<_>>(),
        "close-all",
        "closed",
    );
    let took = gauges_equal_ss(&daemon, port, &refs, INTERVAL + PASS);
    eprintln!("down, live: gauges = ss after {took:?}");

    // Down with the daemon stalled: 11,000 leaves overflow the ring, and a
    // burst that enters CLOSE_WAIT right after finds it full, so its
    // wake-up is lost too.
    daemon.signal(Signal::STOP).unwrap();
    all_at_once(
        &mut second.iter_mut().collect::<Vec<_>>(),
        "close-all",
        "closed",
    );
    let inst = &insts[4];
    s3.ask(&format!("close {inst}"), "closed").unwrap();
    wait_for("late burst in CLOSE_WAIT", Duration::from_secs(20), || {
        let n = ss_to_port(port).len();
        if n == 300 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .unwrap();
    daemon.signal(Signal::CONT).unwrap();
    let all = ids(g.iter().chain([&late]));
    let took = gauges_equal_ss(&daemon, port, &all, INTERVAL + PASS);
    eprintln!("stalled: gauges = ss after {took:?}");
    assert!(lost(&daemon) > lost0, "the ring did overflow");

    // Back to zero.
    late.client.ask("close-all", "closed").unwrap();
    let took = gauges_equal_ss(&daemon, port, &all, INTERVAL + PASS);
    eprintln!("zero: gauges = ss after {took:?}");
    assert!(ss_to_port(port).is_empty());
    assert_eq!(daemon.get("/healthz").unwrap().0, 200);
}

#[test]
fn more_sockets_than_young_holds_are_counted_logged_once_per_interval_and_found() {
    let _serial = serial();
    const N: usize = 1000;
    const BURSTS: usize = 3;
    let ips = ["127.0.11.11", "127.0.11.12", "127.0.11.13"];
    let port = free_port_on(&ips);
    let insts: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    let daemon = Daemon::start(&[
        "--young-sockets",
        "64",
        "--reconcile-interval",
        "2s",
        "--leak-after",
        "1h",
    ])
    .unwrap();
    let full = |d: &Daemon| {
        d.metrics()
            .unwrap()
            .get("cwatch_kernel_errors_total", &[("kind", "map_full")])
            .unwrap_or(0.0)
    };
    let passes = |d: &Daemon| {
        let m = d.metrics().unwrap();
        ["full", "skipped"]
            .iter()
            .map(|p| {
                m.get("cwatch_reconcile_passes_total", &[("pass", p)])
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let mut server = Load::server(&insts).unwrap();
    let g = groups(&mut server, &insts, "cw-young-", N);
    let (full0, passes0) = (full(&daemon), passes(&daemon));
    for (i, inst) in insts.iter().enumerate().take(BURSTS) {
        // A thousand at once into a map of 64: the daemon keeps answering
        // while it happens.
        server.ask(&format!("close {inst}"), "closed").unwrap();
        assert_eq!(daemon.get("/healthz").unwrap().0, 200);
        let refs = ids(&g[..=i]);
        gauges_equal_ss(&daemon, port, &refs, Duration::from_secs(30));
    }
    let dropped = full(&daemon) - full0;
    assert!(
        dropped >= (BURSTS * (N - 64)) as f64,
        "every socket that did not fit is counted: {dropped}"
    );
    let log = daemon.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("kernel limits reached"))
        .count();
    let passed = passes(&daemon) - passes0;
    assert!(lines >= 1, "said at all:\n{}", tail(&log));
    assert!(
        lines as f64 <= passed + 1.0,
        "at most one line per interval: {lines} lines in {passed} passes for {dropped} drops"
    );
    let line = log
        .lines()
        .find(|l| l.contains("kernel limits reached"))
        .unwrap();
    assert!(line.contains("--young-sockets 64"), "{line}");
    eprintln!("{lines} lines in {passed} passes for {dropped} sockets: {line}");
    // The kernel's own line for each socket that did not fit (aya-log),
    // rate-limited in the daemon: a burst per call site, the rest counted.
    let kernel = log
        .lines()
        .filter(|l| l.contains("kernel: YOUNG full"))
        .count();
    assert!(kernel >= 1, "the kernel said it:\n{}", tail(&log));
    assert!(
        kernel <= 10,
        "rate-limited: {kernel} kernel lines for {dropped} drops"
    );
    let m = daemon.metrics().unwrap();
    let outcome = |o: &str| {
        m.get("cwatch_kernel_log_records_total", &[("outcome", o)])
            .unwrap_or(0.0)
    };
    assert!(
        outcome("rate_limited") > 0.0,
        "the rest were held back and counted"
    );
    assert_eq!(outcome("malformed"), 0.0);
    eprintln!(
        "kernel lines: {kernel} logged, {} held back",
        outcome("rate_limited")
    );
}
