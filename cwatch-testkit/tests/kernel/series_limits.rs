//! Cardinality control on real sockets: include/exclude filters keep only
//! this test's sockets, the series limit folds the smallest processes into
//! `comm="[other]"` with the family's sum still equal to `ss`'s count, the
//! exe label names each process's binary, and keying by comm merges pids.
use std::{collections::BTreeMap, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, prom::Scrape, wait_for};

use crate::common::{serial, ss_to_port};

const FAMILY: &str = "cwatch_process_close_wait_sockets";

fn family_sum(m: &Scrape, name: &str) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[test]
fn series_limit_folds_into_other_and_keeps_the_true_total() {
    let _serial = serial();
    let port = crate::common::free_port_on(&["127.0.3.1"]);
    let inst = format!("127.0.3.1:{port}");
    let include = format!("peer_port:{port}");
    // Both daemons run before the clients connect, so they learn the owners.
    let daemon = Daemon::start(&[
        "--include",
        &include,
        "--exclude",
        "comm:fold-1",
        "--exclude",
        "comm:twin",
        "--max-process-series",
        "3",
        "--label",
        "exe",
    ])
    .unwrap();
    let by_comm_daemon = Daemon::start(&["--include", &include, "--process-key", "comm"]).unwrap();
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    // fold-1 .. fold-5 hold 1 .. 5 sockets; two processes named twin hold 2 + 3.
    let mut clients: Vec<Load> = (1..=5)
        .map(|i| Load::client(&format!("fold-{i}"), &[(inst.clone(), i)], "leak").unwrap())
        .collect();
    clients.push(Load::client("twin", &[(inst.clone(), 2)], "leak").unwrap());
    clients.push(Load::client("twin", &[(inst.clone(), 3)], "leak").unwrap());
    server
        .ask(&format!("wait-accepted {inst} 20"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    let truth = ss_to_port(port);
    assert_eq!(truth.len(), 20);
    let counted = truth
        .iter()
        .filter(|s| {
            s.users
                .iter()
                .all(|u| u.comm != "fold-1" && u.comm != "twin")
        })
        .count();
    assert_eq!(counted, 14);

    let m = wait_for(
        "14 sockets in the process family",
        Duration::from_secs(10),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            let sum = family_sum(&m, FAMILY);
            if sum == 14.0 {
                Ok(m)
            } else {
                Err(format!("{sum}"))
            }
        },
    )
    .unwrap();
    // Only our sockets pass the include rule: the family is exactly ours.
    let series: Vec<_> = m.samples.iter().filter(|s| s.name == FAMILY).collect();
    assert_eq!(series.len(), 3, "{}", m.text);
    let by_comm: BTreeMap<&str, f64> = series
        .iter()
        .map(|s| (s.labels["comm"].as_str(), s.value))
        .collect();
    assert_eq!(
        by_comm,
        BTreeMap::from([("fold-5", 5.0), ("fold-4", 4.0), ("[other]", 5.0)])
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", clients[4].pid)).unwrap();
    for s in &series {
        let want = if s.labels["comm"] == "[other]" {
            String::new()
        } else {
            exe.display().to_string()
        };
        assert_eq!(s.labels["exe"], want, "{s:?}");
    }
    assert_eq!(
        m.get("cwatch_series_folded", &[("family", "process")]),
        Some(2.0)
    );
    assert_eq!(family_sum(&m, "cwatch_peer_close_wait_sockets"), 14.0);
    assert_eq!(
        family_sum(&m, "cwatch_process_leaked_sockets"),
        family_sum(&m, "cwatch_peer_leaked_sockets")
    );
    // The API applies the same filters.
    let api = daemon.sockets().unwrap();
    assert_eq!(api.len(), 14);
    assert!(api.iter().all(|s| s["comm"] != "fold-1"));
    drop(daemon);

    // Keyed by comm: the two twin processes make one series, pid="*".
    let m = wait_for("20 sockets", Duration::from_secs(10), || {
        let m = by_comm_daemon.metrics().map_err(|e| e.to_string())?;
        let sum = family_sum(&m, FAMILY);
        if sum == 20.0 {
            Ok(m)
        } else {
            Err(format!("{sum}"))
        }
    })
    .unwrap();
    assert_eq!(
        m.get(FAMILY, &[("pid", "*"), ("comm", "twin")]),
        Some(5.0),
        "{}",
        m.text
    );
    for i in 1..=5 {
        assert_eq!(
            m.get(FAMILY, &[("pid", "*"), ("comm", &format!("fold-{i}"))]),
            Some(f64::from(i)),
            "{}",
            m.text
        );
    }
    drop(clients);
}
