//! `cwatch reap` against the real kernel: two leaking processes, two peers,
//! old and young leaked sockets. The dry run lists exactly the selected
//! sockets and destroys nothing (`ss` unchanged); with `--yes` exactly those
//! leave CLOSE_WAIT and every other one is untouched (other pid, other peer,
//! younger); the leaking process's dead-held gauge rises by that number and
//! `cwatch_reaped_sockets_total` equals it. Bad flags: exit 2, one line
//! naming the value. A leak on an AF_INET6 socket with IPv4-mapped ends (a
//! dual-stack program's), which cwatch shows as IPv4, is reaped too.
use std::{collections::BTreeSet, process::Command, time::Duration};

use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin},
    load::Load,
    ss::SsSocket,
    wait_for,
};

use crate::common::{exits_2_with_one_line, free_port_on, serial, ss_to_port};

const A: &str = "127.0.7.1";
const B: &str = "127.0.7.2";
/// What the test reaps: sockets at least this old. The old ones are made
/// older than this by a margin, the young ones are far younger.
const OLDER_THAN: &str = "15s";
const OLD_AGE: f64 = 18.0;

fn reap(daemon: &Daemon, args: &[&str]) -> String {
    String::from_utf8(crate::common::client(daemon, "reap", args)).unwrap()
}

/// The cookies in the COOKIE column of `reap`'s table.
fn listed(text: &str) -> BTreeSet<u64> {
    text.lines()
        .skip_while(|l| !l.starts_with("COOKIE"))
        .skip(1)
        .map_while(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Cookies `ss` shows in CLOSE_WAIT to either port, with their holder pid.
fn ss_cookies(ports: &[u16], pid: Option<u32>, peer: Option<&str>) -> BTreeSet<u64> {
    ports
        .iter()
        .flat_map(|p| ss_to_port(*p))
        .filter(|s: &SsSocket| pid.is_none_or(|p| s.users.iter().any(|u| u.pid == p)))
        .filter(|s| peer.is_none_or(|a| s.peer.ip().to_string() == a))
        .map(|s| s.cookie)
        .collect()
}

/// The API's age of each of `cookies`; `None` until all are tracked.
fn ages(daemon: &Daemon, cookies: &BTreeSet<u64>) -> Option<Vec<f64>> {
    let api = daemon.sockets().unwrap();
    let ages: Vec<f64> = api
        .iter()
        .filter(|s| s["state"] == "CLOSE_WAIT")
        .filter(|s| s["cookie"].as_u64().is_some_and(|c| cookies.contains(&c)))
        .map(|s| s["age_seconds"].as_f64().unwrap())
        .collect();
    (ages.len() == cookies.len()).then_some(ages)
}

fn metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    daemon.metrics().unwrap().get(name, labels)
}

#[test]
fn reap_destroys_exactly_the_selected_sockets() {
    let _serial = serial();
    let daemon = Daemon::start(&["--leak-after", "1s"]).unwrap();
    let old_port = free_port_on(&[A, B]);
    let young_port = free_port_on(&[A]);
    let (a_old, b_old, a_young) = (
        format!("{A}:{old_port}"),
        format!("{B}:{old_port}"),
        format!("{A}:{young_port}"),
    );
    let mut server = Load::server(&[a_old.clone(), b_old.clone(), a_young.clone()]).unwrap();
    let p = Load::client(
        "cw-reap-p",
        &[(a_old.clone(), 3), (b_old.clone(), 2), (a_young.clone(), 2)],
        "leak",
    )
    .unwrap();
    let q = Load::client(
        "cw-reap-q",
        &[(a_old.clone(), 2), (a_young.clone(), 1)],
        "leak",
    )
    .unwrap();
    for (inst, n) in [(&a_old, 5), (&b_old, 2), (&a_young, 3)] {
        server
            .ask(&format!("wait-accepted {inst} {n}"), "accepted")
            .unwrap();
    }
    let ports = [old_port, young_port];

    // Old: P→A 3, P→B 2, Q→A 2.
    server.ask(&format!("close {a_old}"), "closed").unwrap();
    server.ask(&format!("close {b_old}"), "closed").unwrap();
    wait_for(
        "7 old in CLOSE_WAIT",
        Duration::from_secs(10),
        || match ss_cookies(&[old_port], None, None).len() {
            7 => Ok(()),
            n => Err(n.to_string()),
        },
    )
    .unwrap();
    let old = ss_cookies(&[old_port], None, None);
    let selected = ss_cookies(&[old_port], Some(p.pid), Some(A));
    assert_eq!(selected.len(), 3);
    wait_for("old sockets aged", Duration::from_secs(60), || {
        let Some(ages) = ages(&daemon, &old) else {
            return Err("not all tracked yet".to_string());
        };
        let youngest = ages.into_iter().fold(f64::MAX, f64::min);
        if youngest >= OLD_AGE {
            Ok(())
        } else {
            Err(format!("youngest old socket {youngest}s"))
        }
    })
    .unwrap();

    // Young: P→A 2, Q→A 1 (another port of A), leaked but far younger.
    server.ask(&format!("close {a_young}"), "closed").unwrap();
    wait_for("young sockets leaked", Duration::from_secs(15), || {
        let api = daemon.sockets().unwrap();
        let young = api
            .iter()
            .filter(|s| s["peer_port"] == young_port && s["leaked"] == true)
            .count();
        match young {
            3 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .unwrap();
    let before = ss_cookies(&ports, None, None);
    assert_eq!(before.len(), 10);
    let young = ss_cookies(&[young_port], None, None);
    assert!(
        ages(&daemon, &young).unwrap().iter().all(|a| *a < 5.0),
        "the young sockets are far younger than {OLDER_THAN}"
    );
    let pid = p.pid.to_string();
    let args = ["--older-than", OLDER_THAN, "--pid", &pid, "--peer", A];

    // Dry run: exactly the selected listed, nothing destroyed.
    let dry = reap(&daemon, &args);
    assert_eq!(listed(&dry), selected, "{dry}");
    assert!(dry.contains("dry run: nothing destroyed"), "{dry}");
    assert_eq!(ss_cookies(&ports, None, None), before, "ss unchanged");
    assert_eq!(
        metric(&daemon, "cwatch_reaped_sockets_total", &[]),
        Some(0.0)
    );

    // Reports the daemon cannot check are refused and not counted: a
    // leaked socket still in CLOSE_WAIT (Q's), a young one, an unknown
    // cookie; and a body that is not a report is a 400.
    let q_old = *ss_cookies(&[old_port], Some(q.pid), None).first().unwrap();
    let young_one = *young.first().unwrap();
    let forged = format!("{{\"cookies\":[{q_old},{young_one},1]}}");
    let (status, body) = daemon.post("/api/v1/reaped", &forged).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["counted"], serde_json::json!([]), "{body}");
    assert_eq!(answer["refused"].as_array().unwrap().len(), 3, "{body}");
    assert!(body.contains("still in CLOSE_WAIT"), "{body}");
    assert_eq!(daemon.post("/api/v1/reaped", "[1,2]").unwrap().0, 400);
    assert_eq!(
        metric(&daemon, "cwatch_reaped_sockets_total", &[]),
        Some(0.0)
    );

    // --yes: exactly those leave CLOSE_WAIT.
    let mut yes = args.to_vec();
    yes.push("--yes");
    let done = reap(&daemon, &yes);
    assert_eq!(listed(&done), selected, "{done}");
    assert!(done.contains("destroyed 3 of 3"), "{done}");
    assert!(done.contains("cwatch_process_dead_sockets_held"), "{done}");
    assert!(!done.contains("did not count"), "{done}");
    let after = ss_cookies(&ports, None, None);
    let expected: BTreeSet<u64> = before.difference(&selected).copied().collect();
    assert_eq!(after, expected, "only the selected sockets left CLOSE_WAIT");

    // The destroyed sockets are dead sockets P still holds; counted once.
    wait_for("dead gauge of P", Duration::from_secs(15), || {
        let labels = [("pid", pid.as_str()), ("comm", "cw-reap-p")];
        match metric(&daemon, "cwatch_process_dead_sockets_held", &labels) {
            Some(3.0) => Ok(()),
            got => Err(format!("{got:?}")),
        }
    })
    .unwrap();
    assert_eq!(
        metric(&daemon, "cwatch_reaped_sockets_total", &[]),
        Some(3.0)
    );
    let q_pid = q.pid.to_string();
    assert_eq!(
        metric(
            &daemon,
            "cwatch_process_dead_sockets_held",
            &[("pid", q_pid.as_str())]
        ),
        None,
        "Q lost nothing"
    );

    // Again: nothing left to select; the counter stays.
    let again = reap(&daemon, &yes);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(
        metric(&daemon, "cwatch_reaped_sockets_total", &[]),
        Some(3.0)
    );

    // Bad flags: exit 2, the first line naming the value (clap's usage
    // errors add its hint after it, as for every subcommand); a missing
    // --older-than is exactly one line.
    let missing =
        exits_2_with_one_line(Command::new(cwatch_bin().unwrap()).args(["reap", "--yes"]));
    assert!(missing.contains("--older-than"), "{missing}");
    for (bad, needle) in [
        (&["reap", "--older-than", "soon"][..], "soon"),
        (
            &["reap", "--older-than", "1h", "--peer", "nohost"],
            "nohost",
        ),
    ] {
        let out = Command::new(cwatch_bin().unwrap())
            .args(bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(needle), "{bad:?}: {stderr}");
    }
    drop(q);
    drop(p);
    drop(server);
}

/// The API and `ss -K`'s way of naming a dual-stack socket differ: cwatch
/// shows `::ffff:127.0.7.3` as `127.0.7.3`, the kernel knows the socket as
/// AF_INET6. `reap` asks for it by its IPv4 ends, and must still find and
/// destroy it (the kernel's exact lookup matches addresses, not family).
#[test]
fn reap_destroys_a_leak_on_an_ipv4_mapped_socket() {
    let _serial = serial();
    const C: &str = "127.0.7.3";
    let daemon = Daemon::start(&["--leak-after", "1s"]).unwrap();
    let port = free_port_on(&[C]);
    let plain = format!("{C}:{port}");
    let mut server = Load::server(std::slice::from_ref(&plain)).unwrap();
    let p = Load::client("cw-reap-m", &[(format!("[::ffff:{C}]:{port}"), 2)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {plain} 2"), "accepted")
        .unwrap();
    server.ask(&format!("close {plain}"), "closed").unwrap();
    let leaked = wait_for("2 mapped sockets leaked", Duration::from_secs(15), || {
        let cookies = ss_cookies(&[port], Some(p.pid), None);
        let api = daemon.sockets().unwrap();
        let shown = api
            .iter()
            .filter(|s| s["peer_port"] == port && s["leaked"] == true)
            .filter(|s| s["peer_addr"] == C)
            .count();
        match (cookies.len(), shown) {
            (2, 2) => Ok(cookies),
            n => Err(format!("ss, API: {n:?}")),
        }
    })
    .unwrap();
    assert!(
        ss_to_port(port)
            .iter()
            .all(|s| s.peer.ip().to_string() == format!("::ffff:{C}")),
        "ss shows the mapped form: the sockets are AF_INET6"
    );
    wait_for("ages past 2s", Duration::from_secs(15), || {
        match ages(&daemon, &leaked) {
            Some(a) if a.iter().all(|a| *a >= 2.5) => Ok(()),
            got => Err(format!("{got:?}")),
        }
    })
    .unwrap();
    let pid = p.pid.to_string();
    let done = reap(&daemon, &["--older-than", "2s", "--pid", &pid, "--yes"]);
    assert_eq!(listed(&done), leaked, "{done}");
    assert!(done.contains("destroyed 2 of 2"), "{done}");
    assert_eq!(ss_cookies(&[port], None, None), BTreeSet::new(), "{done}");
    drop(p);
    drop(server);
}
