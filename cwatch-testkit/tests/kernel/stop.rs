//! SIGTERM while a full reconciliation pass is running (28,500 CLOSE_WAIT
//! sockets make each one last a few hundred ms; the daemon logs each one's
//! start, and the signal follows within a few ms): the daemon still exits
//! cleanly within a bounded second, says it did not wait for the pass, its
//! programs are gone, and its pinned maps stay, the same maps, for the next
//! start.
use std::time::{Duration, Instant};

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for, workspace_binary};
use rustix::process::Signal;

use crate::{
    common::serial,
    lifecycle::{bpf_objects_of, pinned_map_id, still_exists},
};

/// Processes holding this many CLOSE_WAIT sockets each.
const HOLDERS: usize = 3;
const EACH: usize = 9_500;

#[test]
fn sigterm_mid_pass_exits_within_a_second_keeping_pins() {
    let _serial = serial();
    let hold = workspace_binary("CWATCH_HOLD_BIN", "cwatch-hold").unwrap();
    let holders: Vec<Load> = (0..HOLDERS)
        .map(|i| {
            let args = vec![
                "--listen".to_string(),
                format!("127.0.6.{}:0", i + 1),
                "--count".into(),
                EACH.to_string(),
            ];
            let mut h = Load::spawn_bin(&hold, &[], &args).unwrap();
            h.expect("holding", Duration::from_secs(120)).unwrap();
            h
        })
        .collect();
    // Passes every 100 ms; with a whole core's budget one in ten is a full
    // one, which at this size takes far longer than the interval.
    let mut daemon = Daemon::spawn(&[
        "--reconcile-interval",
        "100ms",
        "--reconcile-budget",
        "100%",
    ])
    .unwrap();
    daemon.wait_ready(Duration::from_secs(120)).unwrap();
    let (progs, _) = bpf_objects_of(daemon.pid);
    assert!(!progs.is_empty());
    let pin_dir = daemon.pin_dir.take().expect("a private pin dir");
    let pins = ["CLOSE_WAIT", "LINGER", "OWNERS", "LISTENERS", "LAYOUT"];
    let ids: Vec<u64> = pins
        .iter()
        .map(|p| pinned_map_id(&pin_dir.join(p)))
        .collect();

    // Every pass that is not skipped says so before its dump, which at
    // this size takes far longer than the few ms between our looks: the
    // signal lands mid-pass.
    let started = |log: &str| log.matches("reconciliation: full pass started").count();
    let before = started(&daemon.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while started(&daemon.log()) == before {
        assert!(
            Instant::now() < deadline,
            "no full pass started within 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let signalled = Instant::now();
    daemon.signal(Signal::TERM).unwrap();
    let (status, log) = daemon
        .wait_exit_keeping_log(Duration::from_secs(1))
        .expect("cwatch exits within a second of SIGTERM");
    println!("SIGTERM mid-pass: exited after {:?}", signalled.elapsed());
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("stopped without waiting for work in progress")
            && log.contains("cwatch-recon"),
        "the pass was in progress and not waited for:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    wait_for(
        "the programs to be gone",
        Duration::from_secs(5),
        || match progs.iter().find(|id| still_exists("prog", **id)) {
            Some(id) => Err(format!("prog {id} still loaded")),
            None => Ok(()),
        },
    )
    .unwrap();
    for (pin, id) in pins.iter().zip(&ids) {
        assert_eq!(
            pinned_map_id(&pin_dir.join(pin)),
            *id,
            "{pin} is still the map the daemon pinned"
        );
    }
    drop(holders);
    std::fs::remove_dir_all(&pin_dir).unwrap();
}
