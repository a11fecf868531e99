//! Pins that cannot be used: a pin directory off bpffs, a read-only bpffs,
//! a bpffs that cannot be mounted (private mount namespaces: the host's
//! mounts are untouched), and pins written by a newer cwatch. In each case
//! the daemon runs without persistence, says so in one log line and in
//! `cwatch_persistence_enabled 0`, touches nothing in the directory, and its
//! gauges are right; and what is lost is what the README says: after a
//! restart the ages are estimates.
use std::{process::Command, time::Duration};

use cwatch_testkit::{
    daemon::{Daemon, private_pin_dir},
    load::Load,
    wait_for,
};

use crate::{
    common::{leak_on, serial},
    lifecycle::pinned_map_id,
};

const OFF: &str = "running without persistence";

/// The daemon runs without pins, says why once, and counts `client`'s
/// `n` sockets; returns their API objects.
fn runs_without_pins(
    daemon: &Daemon,
    why: &str,
    client: &Load,
    port: u16,
    n: usize,
) -> Vec<serde_json::Value> {
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(OFF)).collect();
    assert_eq!(lines.len(), 1, "one line says so:\n{log}");
    assert!(lines[0].contains(why), "{why:?} not in {:?}", lines[0]);
    let pid = client.pid.to_string();
    wait_for("the leak counted", Duration::from_secs(20), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        if m.scalar("cwatch_persistence_enabled") != Some(0.0) {
            return Err("cwatch_persistence_enabled is not 0".into());
        }
        match m.get(
            "cwatch_process_close_wait_sockets",
            &[("pid", pid.as_str()), ("comm", "nopins")],
        ) {
            Some(v) if v == n as f64 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", daemon.log()));
    let socks: Vec<_> = daemon
        .sockets()
        .unwrap()
        .into_iter()
        .filter(|s| s["peer_port"] == port)
        .collect();
    assert_eq!(socks.len(), n);
    socks
}

#[test]
fn a_pin_dir_off_bpffs_means_no_persistence_and_estimated_ages_after_a_restart() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("cwatch-not-bpffs-{}", std::process::id()));
    let arg = dir.to_str().unwrap();
    let daemon = Daemon::start(&["--pin-dir", arg]).unwrap();
    // The leak starts under the daemon's eyes: its ages are exact.
    let (_server, client, port) = leak_on("127.0.0.1", "nopins", 10);
    let before = runs_without_pins(&daemon, "is not on a bpffs mount", &client, port, 10);
    assert!(!dir.exists(), "nothing created off bpffs");
    assert!(
        before.iter().all(|s| s["age_estimated"] == false),
        "{before:?}"
    );
    drop(daemon);
    // What a restart loses without pins: every age becomes an estimate.
    let daemon = Daemon::start(&["--pin-dir", arg]).unwrap();
    let after = runs_without_pins(&daemon, "is not on a bpffs mount", &client, port, 10);
    assert!(
        after.iter().all(|s| s["age_estimated"] == true),
        "ages are estimates after a restart without pins: {after:?}"
    );
}

/// `cwatch run` in a private mount namespace prepared by `script` (which
/// ends by exec'ing the daemon).
fn in_mount_ns(script: &str, args: &[&str]) -> Daemon {
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ];
    let daemon = Daemon::spawn_wrapped(&wrapper, args).unwrap();
    daemon.wait_ready(Duration::from_secs(60)).unwrap();
    daemon
}

#[test]
fn a_read_only_or_unmountable_bpffs_means_no_persistence() {
    let _serial = serial();
    let (_server, client, port) = leak_on("127.0.0.1", "nopins", 8);

    // Read-only: the directory exists, nothing can be pinned in it.
    let dir = private_pin_dir();
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .unwrap();
    let arg = dir.to_str().unwrap().to_string();
    let daemon = in_mount_ns(
        "mount -o remount,bind,ro /sys/fs/bpf && exec \"$@\"",
        &["--pin-dir", &arg],
    );
    runs_without_pins(&daemon, "not writable", &client, port, 8);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing pinned"
    );
    drop(daemon);
    std::fs::remove_dir(&dir).unwrap();

    // Unmountable: bpffs gone, and nowhere to mount it (an empty read-only
    // /sys/fs over it).
    let daemon = in_mount_ns(
        "umount /sys/fs/bpf && mount -t tmpfs -o ro,size=4k tmpfs /sys/fs && exec \"$@\"",
        &["--pin-dir", "/sys/fs/bpf/cwatch"],
    );
    runs_without_pins(&daemon, "is not on a bpffs mount", &client, port, 8);
    assert!(
        daemon
            .log()
            .contains("bpf is not mounted at /sys/fs/bpf and mounting it failed"),
        "{}",
        daemon.log()
    );
}

/// The `LAYOUT` version pinned at `path`, through bpftool.
fn pinned_layout(path: &std::path::Path) -> u32 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(path)
        .args(["key", "0", "0", "0", "0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes: Vec<u8> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

#[test]
fn pins_of_a_newer_cwatch_are_never_rebuilt_over() {
    let _serial = serial();
    let mut first = Daemon::start(&[]).unwrap();
    let dir = first.pin_dir.take().expect("a private pin dir");
    drop(first);
    let layout = dir.join("LAYOUT");
    let ours = pinned_layout(&layout);
    let newer = (ours + 1).to_le_bytes();
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&layout)
        .args(["key", "0", "0", "0", "0", "value"])
        .args(newer.iter().map(|b| b.to_string()))
        .status()
        .unwrap();
    assert!(status.success());
    let pins = ["CLOSE_WAIT", "LINGER", "OWNERS", "LISTENERS", "LAYOUT"];
    let ids: Vec<u64> = pins.iter().map(|p| pinned_map_id(&dir.join(p))).collect();

    let (_server, client, port) = leak_on("127.0.0.1", "nopins", 6);
    let daemon = Daemon::start(&["--pin-dir", dir.to_str().unwrap()]).unwrap();
    runs_without_pins(&daemon, "written by a newer cwatch", &client, port, 6);
    drop(daemon);
    let now: Vec<u64> = pins.iter().map(|p| pinned_map_id(&dir.join(p))).collect();
    assert_eq!(now, ids, "the newer pins are the same maps");
    assert_eq!(
        pinned_layout(&layout),
        ours + 1,
        "and still the newer layout"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
