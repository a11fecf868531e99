//! The incident at its real width: two leaking clients hold 360 connections
//! to each of 5 server instances (127.0.1.1-5, one port) and a third client
//! closes promptly; 2 instances go away. The gauges must say 720 per leaking
//! process and 720 per dead instance (360 per leaking client), nothing for
//! the prompt closer or the live instances, flip to leaked after leak-after,
//! age correctly, and return to zero when the clients finally close, with the
//! counters and histogram grown by exactly what closed.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use cwatch_testkit::{boottime_ns, daemon::Daemon, load::Load, prom::Scrape, wait_for};

use crate::common::{SECOND, api_to_port, count_by_peer, count_by_pid, serial, ss_to_port};

const WIDTH: usize = 360; // worker threads per client, one connection each per instance
const INSTANCES: usize = 5;
const DEAD: usize = 2;
const LEAK_AFTER_S: u64 = 6;

fn proc_gauge(m: &Scrape, name: &str, pid: u32, comm: &str) -> Option<f64> {
    m.get(name, &[("pid", &pid.to_string()), ("comm", comm)])
}

fn peer_gauge(m: &Scrape, name: &str, ip: &str, port: u16) -> Option<f64> {
    m.get(name, &[("peer_addr", ip), ("peer_port", &port.to_string())])
}

#[test]
fn incident_two_dead_instances_360_wide() {
    let _serial = serial();
    let ips: Vec<String> = (1..=INSTANCES).map(|i| format!("127.0.1.{i}")).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let port = crate::common::free_port_on(&ip_refs);
    let instances: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    let (dead, live) = instances.split_at(DEAD);

    let daemon = Daemon::start(&["--leak-after", &format!("{LEAK_AFTER_S}s")]).unwrap();
    let mut server = Load::server(&instances).unwrap();
    let targets: Vec<(String, usize)> = instances.iter().map(|i| (i.clone(), WIDTH)).collect();
    let mut leaky_a = Load::client("leaky-a", &targets, "leak").unwrap();
    let mut leaky_b = Load::client("leaky-b", &targets, "leak").unwrap();
    let mut prompt = Load::client("prompt", &targets, "close").unwrap();
    for inst in &instances {
        server
            .ask(&format!("wait-accepted {inst} {}", 3 * WIDTH), "accepted")
            .unwrap();
    }

    // The nightly redeploy: two instances go away (FIN to every client).
    let transitions0 = daemon
        .metrics()
        .unwrap()
        .scalar("cwatch_close_wait_transitions_total")
        .unwrap();
    let t0 = boottime_ns();
    for inst in dead {
        let closed = server.ask(&format!("close {inst}"), "closed").unwrap();
        assert_eq!(Load::number(&closed).unwrap(), 3 * WIDTH as u64, "{closed}");
    }
    let t1 = boottime_ns();

    // Ground truth settles: 720 per leaking client, none for the prompt one.
    let expected_per_client = (DEAD * WIDTH) as u64;
    let truth = wait_for(
        "ss: the leaking clients' sockets in CLOSE_WAIT",
        Duration::from_secs(10),
        || {
            let socks = ss_to_port(port);
            let by_pid = count_by_pid(&socks);
            let want = BTreeMap::from([
                (leaky_a.pid, expected_per_client),
                (leaky_b.pid, expected_per_client),
            ]);
            if by_pid == want {
                Ok(socks)
            } else {
                Err(format!("{by_pid:?}"))
            }
        },
    )
    .unwrap();
    let by_peer = count_by_peer(&truth);
    for inst in dead {
        let ip: IpAddr = inst.rsplit_once(':').unwrap().0.parse().unwrap();
        assert_eq!(
            by_peer.get(&ip),
            Some(&(2 * WIDTH as u64)),
            "ss per peer {by_peer:?}"
        );
    }

    // The gauges agree with ss within the freshness bound (1 s).
    let m = wait_for("gauges equal to ss", Duration::from_secs(1), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        let a = proc_gauge(
            &m,
            "cwatch_process_close_wait_sockets",
            leaky_a.pid,
            "leaky-a",
        );
        let b = proc_gauge(
            &m,
            "cwatch_process_close_wait_sockets",
            leaky_b.pid,
            "leaky-b",
        );
        let want = Some(expected_per_client as f64);
        let p = m
            .find(
                "cwatch_process_close_wait_sockets",
                &[("pid", &prompt.pid.to_string())],
            )
            .count();
        if a == want && b == want && p == 0 {
            Ok(m)
        } else {
            Err(format!("a={a:?} b={b:?} prompt series={p}"))
        }
    })
    .unwrap();
    for inst in dead {
        let ip = inst.rsplit_once(':').unwrap().0;
        assert_eq!(
            peer_gauge(&m, "cwatch_peer_close_wait_sockets", ip, port),
            Some(2.0 * WIDTH as f64),
            "dead {ip}"
        );
        assert_eq!(
            peer_gauge(&m, "cwatch_peer_leaked_sockets", ip, port),
            Some(0.0),
            "not yet leaked"
        );
    }
    for inst in live {
        let ip = inst.rsplit_once(':').unwrap().0;
        assert_eq!(
            peer_gauge(&m, "cwatch_peer_close_wait_sockets", ip, port),
            None,
            "live {ip} has no series"
        );
    }
    for (pid, comm) in [(leaky_a.pid, "leaky-a"), (leaky_b.pid, "leaky-b")] {
        assert_eq!(
            proc_gauge(&m, "cwatch_process_leaked_sockets", pid, comm),
            Some(0.0)
        );
    }
    assert_eq!(m.scalar("cwatch_events_lost_total"), Some(0.0));
    // Every socket into CLOSE_WAIT counted: the prompt closer's too.
    assert_eq!(
        m.scalar("cwatch_close_wait_transitions_total"),
        Some(transitions0 + (3 * DEAD * WIDTH) as f64),
        "transitions"
    );

    // The API lists exactly the sockets ss lists, by cookie.
    let api = api_to_port(&daemon.sockets().unwrap(), port);
    let mut api_cookies: Vec<u64> = api.iter().map(|s| s["cookie"].as_u64().unwrap()).collect();
    let mut ss_cookies: Vec<u64> = truth.iter().map(|s| s.cookie).collect();
    api_cookies.sort_unstable();
    ss_cookies.sort_unstable();
    assert_eq!(
        api_cookies, ss_cookies,
        "API and ss disagree on which sockets are in CLOSE_WAIT"
    );

    // ≥ 10 s later: leaked, and ages right to within a second.
    let wake = t1 + 10 * SECOND;
    std::thread::sleep(Duration::from_nanos(wake.saturating_sub(boottime_ns())));
    let before = boottime_ns();
    let m = daemon.metrics().unwrap();
    let after = boottime_ns();
    // The oldest transition happened in [t0, t1]: its age at the scrape lies
    // in [before - t1, after - t0].
    let (lo, hi) = (
        (before - t1) as f64 / 1e9 - 1.0,
        (after - t0) as f64 / 1e9 + 1.0,
    );
    for (pid, comm) in [(leaky_a.pid, "leaky-a"), (leaky_b.pid, "leaky-b")] {
        assert_eq!(
            proc_gauge(&m, "cwatch_process_leaked_sockets", pid, comm),
            Some(expected_per_client as f64),
            "{comm} leaked"
        );
        let age = proc_gauge(&m, "cwatch_process_oldest_close_wait_seconds", pid, comm).unwrap();
        assert!(
            age >= lo && age <= hi,
            "{comm} oldest age {age} not in [{lo}, {hi}]"
        );
    }
    for inst in dead {
        let ip = inst.rsplit_once(':').unwrap().0;
        assert_eq!(
            peer_gauge(&m, "cwatch_peer_leaked_sockets", ip, port),
            Some(2.0 * WIDTH as f64)
        );
        let age = peer_gauge(&m, "cwatch_peer_oldest_close_wait_seconds", ip, port).unwrap();
        assert!(
            age >= lo && age <= hi,
            "peer {ip} oldest age {age} not in [{lo}, {hi}]"
        );
    }
    assert_eq!(m.scalar("cwatch_events_lost_total"), Some(0.0));

    // The clients finally close everything (the leaked sockets among them).
    let closed0 = m.scalar("cwatch_close_wait_closed_total").unwrap();
    let count0 = m
        .scalar("cwatch_close_wait_duration_seconds_count")
        .unwrap();
    let sum0 = m.scalar("cwatch_close_wait_duration_seconds_sum").unwrap();
    let c0 = boottime_ns();
    for client in [&mut leaky_a, &mut leaky_b] {
        let closed = client.ask("close-all", "closed").unwrap();
        assert_eq!(Load::number(&closed).unwrap(), (INSTANCES * WIDTH) as u64);
    }
    let c1 = boottime_ns();
    let n = 2 * expected_per_client;
    let m = wait_for(
        "leaking clients' series gone",
        Duration::from_secs(2),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            let left: usize = [leaky_a.pid, leaky_b.pid]
                .iter()
                .map(|pid| {
                    m.find(
                        "cwatch_process_close_wait_sockets",
                        &[("pid", &pid.to_string())],
                    )
                    .count()
                })
                .sum();
            let closed = m.scalar("cwatch_close_wait_closed_total").unwrap_or(0.0);
            if left == 0 && closed >= closed0 + n as f64 {
                Ok(m)
            } else {
                Err(format!("series left {left}, closed {closed}"))
            }
        },
    )
    .unwrap();
    assert_eq!(
        m.scalar("cwatch_close_wait_closed_total"),
        Some(closed0 + n as f64),
        "closed_total grows by exactly {n}"
    );
    assert_eq!(
        m.scalar("cwatch_close_wait_duration_seconds_count"),
        Some(count0 + n as f64),
        "histogram count grows by exactly {n}"
    );
    let sum = m.scalar("cwatch_close_wait_duration_seconds_sum").unwrap() - sum0;
    // Each closed socket spent between (c0 - t1) and (c1 - t0) in CLOSE_WAIT.
    let (lo, hi) = (
        n as f64 * (c0 - t1) as f64 / 1e9,
        n as f64 * (c1 - t0) as f64 / 1e9,
    );
    assert!(
        sum >= lo - 0.01 && sum <= hi + 0.01,
        "histogram sum grew by {sum}, not in [{lo}, {hi}]"
    );
    for inst in dead {
        let ip = inst.rsplit_once(':').unwrap().0;
        assert_eq!(
            peer_gauge(&m, "cwatch_peer_close_wait_sockets", ip, port),
            None,
            "{ip} back to zero"
        );
        assert_eq!(peer_gauge(&m, "cwatch_peer_leaked_sockets", ip, port), None);
    }

    // The server never closes its accepted sockets of the live instances, so
    // the clients' close put them in CLOSE_WAIT: inbound sockets, owned by
    // the server (learned from its listener, then its fds), with
    // peer_port="*".
    let inbound_truth = wait_for(
        "ss: the server's sockets in CLOSE_WAIT",
        Duration::from_secs(5),
        || {
            let n = cwatch_testkit::ss::close_wait()
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|s| s.local.port() == port)
                .count();
            if n == 2 * live.len() * WIDTH {
                Ok(n)
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .unwrap();
    let inbound = wait_for(
        "the API shows them with fds",
        Duration::from_secs(10),
        || {
            let ours: Vec<_> = daemon
                .sockets()
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|s| s["local_port"] == port && s["fd"].is_u64())
                .collect();
            if ours.len() == inbound_truth {
                Ok(ours)
            } else {
                Err(format!("{}", ours.len()))
            }
        },
    )
    .unwrap();
    assert!(
        inbound
            .iter()
            .all(|s| s["direction"] == "inbound" && s["pid"] == server.pid),
        "{:?}",
        inbound[0]
    );
    let m = daemon.metrics().unwrap();
    assert_eq!(
        proc_gauge(
            &m,
            "cwatch_process_close_wait_sockets",
            server.pid,
            "cwatch-load"
        ),
        Some(inbound_truth as f64),
        "the server holds exactly its inbound sockets"
    );
    let star = m
        .get(
            "cwatch_peer_close_wait_sockets",
            &[("peer_addr", "127.0.0.1"), ("peer_port", "*")],
        )
        .unwrap_or(0.0);
    assert!(
        star >= inbound_truth as f64,
        "peer 127.0.0.1:* gauge {star} < {inbound_truth}"
    );

    // Let the instances go too: then nothing of this test remains.
    prompt.ask("close-all", "closed").unwrap();
    for inst in live {
        server.ask(&format!("close {inst}"), "closed").unwrap();
    }
    wait_for(
        "no socket of this test left in the API",
        Duration::from_secs(2),
        || {
            let left: Vec<_> = daemon
                .sockets()
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|s| s["peer_port"] == port || s["local_port"] == port)
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{} left", left.len()))
            }
        },
    )
    .unwrap();
    let m = daemon.metrics().unwrap();
    assert_eq!(m.scalar("cwatch_events_lost_total"), Some(0.0));
    for pid in [leaky_a.pid, leaky_b.pid, prompt.pid, server.pid] {
        assert_eq!(
            m.find(
                "cwatch_process_close_wait_sockets",
                &[("pid", &pid.to_string())]
            )
            .count(),
            0
        );
    }
    let status = daemon.stop().unwrap();
    assert!(status.success(), "cwatch exited with {status}");
}
