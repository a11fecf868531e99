//! Failures are visible, and only as large as they are: a network namespace
//! that cannot be entered (a stale `/run/netns` entry, as `ip netns` leaves
//! when its bind mount is gone) and `/proc` reads the daemon is refused (a
//! process of another user, the daemon without CAP_SYS_PTRACE and
//! CAP_DAC_READ_SEARCH) are counted in `cwatch_source_failures_total` by
//! source; reconciliation still succeeds (its timestamp moves on), every
//! scrape answers, and the gauges still equal `ss`.
use std::time::Duration;

use cwatch_testkit::{
    daemon::{Daemon, setpriv_exactly},
    load::Load,
    prom::Scrape,
    wait_for,
};

use crate::common::{serial, ss_to_port};

fn failures(m: &Scrape, source: &str) -> f64 {
    m.get("cwatch_source_failures_total", &[("source", source)])
        .unwrap_or_else(|| panic!("no failure counter for {source}:\n{}", m.text))
}

/// Removes a file on drop.
struct Stale(std::path::PathBuf);

impl Drop for Stale {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_namespace_that_cannot_be_entered_is_counted_and_nothing_else_fails() {
    let _serial = serial();
    let port = crate::common::free_port_on(&["127.0.7.1"]);
    let inst = format!("127.0.7.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let client = Load::client("ns-fail", &[(inst.clone(), 4)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} 4"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    std::fs::create_dir_all("/run/netns").unwrap();
    let stale = Stale(format!("/run/netns/cwatch-test-stale-{}", std::process::id()).into());
    std::fs::write(&stale.0, "").unwrap();

    let include = format!("peer_port:{port}");
    // A whole core's budget: the safety net every ten intervals, whatever a
    // pass costs.
    let daemon = Daemon::start(&[
        "--include",
        &include,
        "--reconcile-interval",
        "100ms",
        "--reconcile-budget",
        "100%",
    ])
    .unwrap();
    let first = daemon.metrics().unwrap();
    assert!(
        failures(&first, "netns") >= 1.0,
        "the start-up pass met it:\n{}",
        first.text
    );
    let stamp = |m: &Scrape| {
        m.scalar("cwatch_reconcile_last_success_timestamp_seconds")
            .unwrap()
    };
    assert!(stamp(&first) > 1.6e9, "{}", first.text);
    assert_eq!(first.scalar("cwatch_reconcile_interval_seconds"), Some(0.1));
    // Every full pass (one in ten here: every second) meets it again, and
    // each pass still succeeds.
    let later = wait_for("more netns failures", Duration::from_secs(20), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        if failures(&m, "netns") > failures(&first, "netns") && stamp(&m) > stamp(&first) {
            Ok(m)
        } else {
            Err(m.text)
        }
    })
    .unwrap();
    assert_eq!(failures(&later, "reconcile"), 0.0, "{}", later.text);
    assert_eq!(failures(&later, "sock_diag"), 0.0, "{}", later.text);
    let pid = client.pid.to_string();
    assert_eq!(
        later.get(
            "cwatch_process_close_wait_sockets",
            &[("pid", &pid), ("comm", "ns-fail")]
        ),
        Some(ss_to_port(port).len() as f64),
        "{}",
        later.text
    );
    assert!(
        daemon.log().contains("cannot enter the network namespace"),
        "{}",
        daemon.log()
    );
    // Gone again: no more failures.
    drop(stale);
    std::thread::sleep(Duration::from_millis(1500));
    let settled = failures(&daemon.metrics().unwrap(), "netns");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(failures(&daemon.metrics().unwrap(), "netns"), settled);
    drop((daemon, client, server));
}

#[test]
fn proc_reads_refused_are_counted_and_the_socket_still_counts() {
    let _serial = serial();
    let port = crate::common::free_port_on(&["127.0.7.2"]);
    let inst = format!("127.0.7.2:{port}");
    // The daemon first, watching every process (a process named in the
    // config joins the list within seconds; this client connects at once):
    // the kernel names a watched process at connect(), so the socket keeps
    // its owner when its fds cannot be read.
    let caps = setpriv_exactly(&["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]);
    let wrapper: Vec<&str> = caps.iter().map(String::as_str).collect();
    let include = format!("peer_port:{port}");
    let daemon =
        Daemon::spawn_wrapped(&wrapper, &["--include", &include, "--watch", "all"]).unwrap();
    daemon.wait_ready(Duration::from_secs(60)).unwrap();
    let before = failures(&daemon.metrics().unwrap(), "procfs");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    // A client of another user: without CAP_SYS_PTRACE and
    // CAP_DAC_READ_SEARCH the daemon may not read its fd table.
    let args: Vec<String> = [
        "client",
        "--comm",
        "nobody-leak",
        "--on-eof",
        "leak",
        "--connect",
        &inst,
        "--count",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut client = Load::spawn_wrapped(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ],
        &args,
    )
    .unwrap();
    client.expect("connected", Duration::from_secs(60)).unwrap();
    server
        .ask(&format!("wait-accepted {inst} 3"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    let pid = client.pid.to_string();
    let m = wait_for(
        "procfs failures and the gauge",
        Duration::from_secs(20),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            let counted = m.get(
                "cwatch_process_close_wait_sockets",
                &[("pid", &pid), ("comm", "nobody-leak")],
            );
            if failures(&m, "procfs") > before && counted == Some(3.0) {
                Ok(m)
            } else {
                Err(m.text)
            }
        },
    )
    .unwrap();
    assert_eq!(ss_to_port(port).len(), 3);
    assert_eq!(failures(&m, "reconcile"), 0.0, "{}", m.text);
    // The holders stay unknown: the kernel's owner is shown, its fd null.
    let api = daemon.sockets().unwrap();
    let mine: Vec<_> = api.iter().filter(|s| s["pid"] == client.pid).collect();
    assert!(
        mine.len() == 3 && mine.iter().all(|s| s["fd"].is_null()),
        "{api:?}"
    );
    drop((daemon, client, server));
}
