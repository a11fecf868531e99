//! One daemon per pin directory: a second `cwatch run` on the pin directory
//! of a running one refuses with one line naming the first (its pid) and
//! exit code 2, loads nothing, and the first keeps its gauges equal to `ss`
//! through it and after; the lock never goes stale (after a SIGKILL the
//! next daemon starts). With `--pin-dir none` nothing is shared, so two
//! daemons run side by side, each right.
use std::{process::Command, time::Duration};

use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin, free_port},
    load::Load,
    wait_for,
};
use rustix::process::Signal;

use crate::common::{exits_2_with_one_line, leak_on, serial, ss_to_port};

/// Programs named like cwatch's main one, host-wide.
fn cwatch_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .unwrap();
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("inet_sock_set"))
        })
        .count()
}

fn gauge_is(daemon: &Daemon, client: &Load, comm: &str, want: usize) {
    let pid = client.pid.to_string();
    wait_for(
        &format!("{want} sockets of {comm}"),
        Duration::from_secs(20),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            let got = m
                .get(
                    "cwatch_process_close_wait_sockets",
                    &[("pid", pid.as_str()), ("comm", comm)],
                )
                .unwrap_or(0.0);
            if got == want as f64 {
                Ok(())
            } else {
                Err(format!("{got}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", daemon.log()));
}

#[test]
fn a_second_daemon_on_the_same_pins_refuses_naming_the_first() {
    let _serial = serial();
    let mut first = Daemon::start(&[]).unwrap();
    let pin_dir = first.pin_dir.take().expect("a private pin dir");
    let (_server, client, port) = leak_on("127.0.0.1", "twice", 30);
    gauge_is(&first, &client, "twice", 30);
    let before = cwatch_programs();

    let stderr = exits_2_with_one_line(
        Command::new(cwatch_bin().unwrap())
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{}", free_port().unwrap()),
            ])
            .arg("--pin-dir")
            .arg(&pin_dir),
    );
    assert!(
        stderr.contains(&format!("pid {}", first.pid))
            && stderr.contains(&pin_dir.display().to_string()),
        "names the first daemon and the directory: {stderr}"
    );
    assert_eq!(cwatch_programs(), before, "the second loaded nothing");

    // The first is unaffected: still equal to ss, up and down.
    assert_eq!(ss_to_port(port).len(), 30);
    gauge_is(&first, &client, "twice", 30);
    drop(client);
    wait_for("the leak gone", Duration::from_secs(20), || {
        let m = first.metrics().map_err(|e| e.to_string())?;
        let left: f64 = m
            .find("cwatch_process_close_wait_sockets", &[("comm", "twice")])
            .map(|s| s.value)
            .sum();
        if left == 0.0 && ss_to_port(port).is_empty() {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .unwrap();

    // Killed, the first leaves no stale lock: the next one starts there.
    first.signal(Signal::KILL).unwrap();
    first.wait_exit(Duration::from_secs(10)).unwrap();
    let next = Daemon::start(&["--pin-dir", pin_dir.to_str().unwrap()]).unwrap();
    drop(next);
    std::fs::remove_dir_all(&pin_dir).unwrap();
}

#[test]
fn without_pins_two_daemons_run_side_by_side() {
    let _serial = serial();
    let a = Daemon::start(&["--pin-dir", "none"]).unwrap();
    let b = Daemon::start(&["--pin-dir", "none"]).unwrap();
    let (_server, client, _port) = leak_on("127.0.0.1", "sidebyside", 12);
    for d in [&a, &b] {
        gauge_is(d, &client, "sidebyside", 12);
        let m = d.metrics().unwrap();
        assert_eq!(m.scalar("cwatch_persistence_enabled"), Some(0.0));
    }
}
