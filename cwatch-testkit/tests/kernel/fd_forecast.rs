//! The fd-exhaustion forecast's inputs: `cwatch_process_open_fds` and
//! `cwatch_process_max_fds` of a real leaking process equal what /proc says
//! (the entries of `/proc/<pid>/fd`, the soft `Max open files` of
//! `/proc/<pid>/limits`), as its fds grow and after `prlimit` lowers its
//! soft limit; a process without CLOSE_WAIT sockets has neither.
use std::{process::Command, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for};

use crate::common::{free_port_on, serial, ss_to_port};

/// What /proc says of `pid`: open fds, soft RLIMIT_NOFILE.
fn proc_truth(pid: u32) -> (f64, f64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse::<f64>()
        .unwrap();
    (fds as f64, soft)
}

fn gauges(daemon: &Daemon, pid: u32, comm: &str) -> (Option<f64>, Option<f64>) {
    let m = daemon.metrics().unwrap();
    let labels = [("pid", pid.to_string()), ("comm", comm.to_string())];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (
        m.get("cwatch_process_open_fds", &labels),
        m.get("cwatch_process_max_fds", &labels),
    )
}

/// Waits until the daemon's two gauges for `pid` equal /proc's figures.
fn wait_equal(daemon: &Daemon, pid: u32, comm: &str) -> (f64, f64) {
    wait_for("fd gauges equal /proc", Duration::from_secs(15), || {
        let truth = proc_truth(pid);
        match gauges(daemon, pid, comm) {
            (Some(open), Some(max)) if (open, max) == truth => Ok(truth),
            got => Err(format!("daemon {got:?}, /proc {truth:?}")),
        }
    })
    .unwrap()
}

#[test]
fn open_and_max_fds_of_a_leaking_process_equal_proc() {
    let _serial = serial();
    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let port = free_port_on(&["127.0.6.1"]);
    let inst = format!("127.0.6.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let mut leaky = Load::client("cw-fdleak", &[(inst.clone(), 6)], "leak").unwrap();
    let quiet = Load::client("cw-fdquiet", &[(inst.clone(), 1)], "close").unwrap();
    server
        .ask(&format!("wait-accepted {inst} 7"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    wait_for(
        "6 in CLOSE_WAIT",
        Duration::from_secs(10),
        || match ss_to_port(port).len() {
            6 => Ok(()),
            n => Err(n.to_string()),
        },
    )
    .unwrap();

    let (open, _) = wait_equal(&daemon, leaky.pid, "cw-fdleak");
    assert!(open >= 6.0 + 3.0, "6 sockets and stdio: {open}");

    // More fds (each socket duplicated), and a soft limit set from outside.
    leaky.ask("dup-all", "duped").unwrap();
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(leaky.pid.to_string())
        .arg("--nofile=777:")
        .status()
        .unwrap();
    assert!(status.success(), "prlimit: {status:?}");
    let (after, max) = wait_equal(&daemon, leaky.pid, "cw-fdleak");
    assert_eq!(max, 777.0, "prlimit's soft limit, read back by /proc too");
    assert_eq!(after, open + 6.0, "each of the 6 sockets duplicated");

    // A process holding no CLOSE_WAIT socket (it closed its own) has no fd
    // series.
    assert_eq!(gauges(&daemon, quiet.pid, "cw-fdquiet"), (None, None));
    drop(quiet);
    drop(leaky);
    drop(server);
}
