//! The systemd unit, checked by systemd's own tools (systemd is not PID 1 on
//! the test machine, so the unit cannot be started here): `systemd-analyze
//! verify` is clean, `systemd-analyze security` rates it at most 2.5
//! ("OK"; 2.7 as root, 2.3 as the dedicated user it now runs as), and every system call the daemon makes while it loads, sees a leak
//! and shuts down (traced with strace) is allowed by its SystemCallFilter=.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin},
    load::Load,
    wait_for,
};
use rustix::process::{Pid, Signal, kill_process};

use crate::common::{TempDir, output, read_repo_file, run_ok, serial, tool};

/// The unit with ExecStart= pointing at the binary under test.
fn unit_for_test(dir: &TempDir) -> std::path::PathBuf {
    let unit = read_repo_file("deploy/systemd/cwatch.service");
    assert!(unit.contains("ExecStart=/usr/bin/cwatch run"));
    let bin = cwatch_bin().unwrap();
    let path = dir.path().join("cwatch.service");
    std::fs::write(
        &path,
        unit.replace(
            "ExecStart=/usr/bin/cwatch",
            &format!("ExecStart={}", bin.display()),
        ),
    )
    .unwrap();
    path
}

#[test]
fn unit_verifies_clean_and_rates_ok() {
    let _serial = serial();
    let dir = TempDir::new("unit");
    let unit = unit_for_test(&dir);
    let analyze = tool("systemd-analyze");
    let out = output(
        Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&unit),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {}\n{text}",
        out.status
    );
    let report = run_ok(
        Command::new(&analyze)
            .args(["security", "--offline=true", "--threshold=30"])
            .arg(&unit),
    );
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for cwatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    println!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.5, "exposure {score} > 2.5:\n{report}");
    let text = read_repo_file("deploy/systemd/cwatch.service");
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=-/sys/fs/bpf/cwatch",
        "User=cwatch",
        "Group=cwatch",
        "ExecStartPre=-+/usr/bin/install -d -m 0700 -o cwatch -g cwatch /sys/fs/bpf/cwatch",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "ExecStart=/usr/bin/cwatch run --config /etc/cwatch/cwatch.toml",
    ] {
        assert!(text.lines().any(|l| l == line), "unit lacks {line}");
    }
}

/// Every system call name in every group systemd knows, by group.
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let text = run_ok(Command::new(tool("systemd-analyze")).arg("syscall-filter"));
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            current = entry.to_string();
        } else {
            groups
                .entry(current.clone())
                .or_default()
                .push(entry.to_string());
        }
    }
    groups
}

fn expand(item: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    match groups.get(item).filter(|_| item.starts_with('@')) {
        Some(members) => members.iter().for_each(|m| expand(m, groups, out)),
        None => {
            out.insert(item.to_string());
        }
    }
}

/// The system calls the unit's SystemCallFilter= lines allow.
fn allowed_by_unit() -> BTreeSet<String> {
    let groups = syscall_groups();
    let unit = read_repo_file("deploy/systemd/cwatch.service");
    let mut allowed = BTreeSet::new();
    for value in unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
    {
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let mut set = BTreeSet::new();
        for item in list.split_whitespace() {
            expand(item, &groups, &mut set);
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    assert!(allowed.contains("bpf") && allowed.contains("read"));
    allowed
}

#[test]
fn every_syscall_the_daemon_makes_is_allowed_by_the_unit() {
    let _serial = serial();
    let dir = TempDir::new("strace");
    let trace = dir.path().join("trace");
    let strace = tool("strace");
    let wrapper = [
        strace.to_str().unwrap(),
        "-f",
        "-qq",
        "-o",
        trace.to_str().unwrap(),
        "--",
    ];
    let daemon = Daemon::spawn_full(&wrapper, &[], &["--leak-after", "1s"]).unwrap();
    daemon.wait_ready(Duration::from_secs(120)).unwrap();
    // A leak, so that every path runs: events, aging, metrics, API.
    let port = cwatch_testkit::daemon::free_port().unwrap();
    let inst = format!("127.0.0.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let client = Load::client("traceleak", &[(inst.clone(), 10)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} 10"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    let pid = client.pid.to_string();
    wait_for("10 leaked", Duration::from_secs(10), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        match m.get(
            "cwatch_process_leaked_sockets",
            &[("pid", pid.as_str()), ("comm", "traceleak")],
        ) {
            Some(10.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    daemon.get("/healthz").unwrap();
    // SIGTERM to cwatch itself (strace's child); strace exits with it.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", daemon.pid)).unwrap();
    let cwatch_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    kill_process(Pid::from_raw(cwatch_pid).unwrap(), Signal::TERM).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}");

    let trace = std::fs::read_to_string(&trace).unwrap();
    let used: BTreeSet<String> = trace
        .lines()
        .filter_map(|l| {
            // "<pid> name(args…) = …" or "<pid> <... name resumed> …"
            let rest = l.split_once(' ')?.1.trim_start();
            let rest = rest.strip_prefix("<... ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && !rest.starts_with("+++") && !rest.starts_with("---"))
                .then_some(name)
        })
        .collect();
    assert!(used.contains("bpf"), "the trace has no bpf(): {used:?}");
    let allowed = allowed_by_unit();
    let refused: Vec<&String> = used
        .iter()
        .filter(|s| !allowed.contains(*s) && s.as_str() != "execve")
        .collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= would refuse {refused:?} (used: {used:?})"
    );
}
