//! The daemon's life: bad input stops it before anything is loaded; it serves
//! 503 until ready; it mounts bpffs/tracefs where they are missing; garbage
//! HTTP does not hurt it; and whether stopped with SIGTERM or killed, it
//! leaves no program behind and no map but the pinned ones, which go with
//! their pin directory.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin},
    wait_for,
};
use rustix::process::Signal;

use crate::common::serial;

/// (program ids, map ids) that the process `pid` holds, from the fdinfo of
/// its BPF fds (links name their program; the program names its maps).
pub(crate) fn bpf_objects_of(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let (mut progs, mut maps) = (Vec::new(), Vec::new());
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo readable") {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        for line in info.lines() {
            let id = |key: &str| {
                line.strip_prefix(key)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let Some(id) = id("prog_id:") {
                progs.push(id);
            }
            if let Some(id) = id("map_id:") {
                maps.push(id);
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    maps.sort_unstable();
    maps.dedup();
    (progs, maps)
}

pub(crate) fn still_exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn assert_all_gone(progs: &[u64], maps: &[u64]) {
    wait_for(
        "the daemon's programs and maps to be freed",
        Duration::from_secs(10),
        || {
            let left: Vec<String> = progs
                .iter()
                .filter(|id| still_exists("prog", **id))
                .map(|id| format!("prog {id}"))
                .chain(
                    maps.iter()
                        .filter(|id| still_exists("map", **id))
                        .map(|id| format!("map {id}")),
                )
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join(", "))
            }
        },
    )
    .unwrap();
}

#[test]
fn stop_and_kill_leave_nothing_behind() {
    let _serial = serial();
    for signal in [Signal::TERM, Signal::KILL] {
        let mut daemon = Daemon::start(&[]).unwrap();
        let (progs, maps) = bpf_objects_of(daemon.pid);
        assert!(
            !progs.is_empty(),
            "expected the program held by pid {}",
            daemon.pid
        );
        assert!(
            maps.len() >= 4,
            "expected the maps held by pid {}: {maps:?}",
            daemon.pid
        );
        // Ours to remove now, not the daemon handle's.
        let pin_dir = daemon.pin_dir.take().expect("a private pin dir");
        let names: Vec<String> = std::fs::read_dir(&pin_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for name in [
            "NURSERY",
            "YOUNG",
            "CLOSE_WAIT",
            "LINGER",
            "OWNERS",
            "LISTENERS",
            "LAYOUT",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} not pinned: {names:?}"
            );
        }
        let pinned: Vec<u64> = names
            .iter()
            .map(|name| pinned_map_id(&pin_dir.join(name)))
            .collect();
        // The programs use every pinned map but LAYOUT, only read at load.
        let used: Vec<u64> = names
            .iter()
            .zip(&pinned)
            .filter(|(name, _)| *name != "LAYOUT")
            .map(|(_, id)| *id)
            .collect();
        assert!(
            used.iter().all(|id| maps.contains(id)),
            "{names:?} {used:?} ⊄ {maps:?}"
        );
        daemon.signal(signal).unwrap();
        let status = daemon.wait_exit(Duration::from_secs(20)).unwrap();
        if signal == Signal::TERM {
            assert!(
                status.success(),
                "SIGTERM should end cwatch cleanly, got {status}"
            );
        }
        let unpinned: Vec<u64> = maps
            .iter()
            .copied()
            .filter(|id| !pinned.contains(id))
            .collect();
        assert_all_gone(&progs, &unpinned);
        assert!(
            pinned.iter().all(|id| still_exists("map", *id)),
            "pinned maps outlive the daemon"
        );
        std::fs::remove_dir_all(&pin_dir).unwrap();
        assert_all_gone(&[], &pinned);
    }
}

/// The id of the map pinned at `path` (`bpftool -j map show pinned`).
pub(crate) fn pinned_map_id(path: &std::path::Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(path)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool on {}: {e}: {out:?}", path.display()));
    info["id"].as_u64().unwrap()
}

#[test]
fn bad_input_exits_2_with_one_line_and_loads_nothing() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("cwatch-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_key = dir.join("bad-key.toml");
    std::fs::write(&bad_key, "listen = \"127.0.0.1:9\"\nleak_aftr = \"5m\"\n").unwrap();
    let bad_key = bad_key.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--leak-after", "soonish"], "soonish"),
        (vec!["run", "--listen", "nowhere"], "nowhere"),
        (vec!["run", "--leak-after", "0s"], "'0s'"),
        (
            vec!["run", "--config", "/nonexistent/cwatch.toml"],
            "/nonexistent/cwatch.toml",
        ),
        (vec!["run", "--config", &bad_key], "leak_aftr"),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let out = Command::new(cwatch_bin().unwrap())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(needle),
            "{args:?}: first line {first:?} does not name {needle:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn healthz_is_503_until_ready_and_http_garbage_is_harmless() {
    let _serial = serial();
    let daemon = Daemon::spawn(&[]).unwrap();
    let mut seen = Vec::new();
    wait_for("ready", Duration::from_secs(60), || {
        match daemon.get("/healthz") {
            Ok((200, _)) => Ok(()),
            Ok((code, _)) => {
                seen.push(code);
                Err(format!("{code}"))
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .unwrap();
    assert!(
        seen.contains(&503),
        "never saw 503 while starting (saw {seen:?})"
    );

    assert_eq!(daemon.get("/nope").unwrap().0, 404);
    assert_eq!(daemon.get("/metrics/../etc/passwd").unwrap().0, 404);
    for garbage in [
        &b"\x00\xff\x13garbage\r\n\r\n"[..],
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET",
    ] {
        let mut conn = TcpStream::connect(daemon.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = conn.write_all(garbage);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
    }
    assert_eq!(
        daemon.get("/healthz").unwrap().0,
        200,
        "still healthy after garbage"
    );
    assert!(daemon.metrics().is_ok());
}

#[test]
fn mounts_bpffs_and_tracefs_when_missing() {
    let _serial = serial();
    // A private mount namespace where neither is mounted; the host's mounts
    // are untouched.
    let script = "umount /sys/fs/bpf 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; \
                  if grep -qE ' /sys/(fs/bpf|kernel/tracing) ' /proc/self/mountinfo; then echo still mounted >&2; exit 99; fi; \
                  exec \"$@\"";
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
    let daemon = Daemon::spawn_wrapped(&wrapper, &[]).unwrap();
    daemon.wait_ready(Duration::from_secs(60)).unwrap();
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", daemon.pid)).unwrap();
    let mounted = |path: &str, fstype: &str| {
        mountinfo.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-");
            fields.get(4) == Some(&path) && sep.and_then(|i| fields.get(i + 1)) == Some(&fstype)
        })
    };
    assert!(
        mounted("/sys/fs/bpf", "bpf"),
        "bpffs not mounted:\n{mountinfo}"
    );
    assert!(
        mounted("/sys/kernel/tracing", "tracefs"),
        "tracefs not mounted:\n{mountinfo}"
    );
    let log = daemon.log();
    assert!(log.contains("mounted bpf at /sys/fs/bpf"), "{log}");
    assert!(
        log.contains("mounted tracefs at /sys/kernel/tracing"),
        "{log}"
    );
}
