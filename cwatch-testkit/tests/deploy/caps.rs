//! Capabilities: once ready, every thread of the daemon holds exactly
//! `caps::KEPT` (read from /proc/<pid>/task/*/status); started with exactly
//! the unit's set (`caps::REQUIRED`, through setpriv) it works — it sees a
//! leak and names its owner; with less than it needs to load, it refuses to
//! start with one line saying why. The unit file and the DaemonSet grant
//! exactly `caps::REQUIRED`.
use std::time::Duration;

use cwatch_daemon::daemon::caps::{self, KEPT, REQUIRED};
use cwatch_testkit::{
    daemon::{Daemon, setpriv_exactly},
    load::Load,
    wait_for,
};

use crate::common::{cap_names, read_repo_file, serial};

fn status_of(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every thread's effective and permitted sets equal `want`; inheritable and
/// ambient are empty.
pub(crate) fn assert_all_threads(pid: u32, want: u64) {
    let leader = status_of(&format!("/proc/{pid}/status"));
    assert_eq!(
        caps::status_mask(&leader, "CapEff:"),
        Some(want),
        "CapEff of the daemon: {:?}, want {:?}",
        caps::status_mask(&leader, "CapEff:").map(caps::names),
        caps::names(want)
    );
    let mut threads = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = status_of(&entry.unwrap().path().join("status").to_string_lossy());
        for (key, expect) in [
            ("CapEff:", want),
            ("CapPrm:", want),
            ("CapInh:", 0),
            ("CapAmb:", 0),
        ] {
            assert_eq!(
                caps::status_mask(&status, key),
                Some(expect),
                "{key} of a daemon thread:\n{status}"
            );
        }
        threads += 1;
    }
    assert!(
        threads > 1,
        "expected a multi-threaded daemon, saw {threads}"
    );
}

/// With exactly `wrapper_caps`, the daemon starts, drops to KEPT, and sees a
/// leak with its owner.
fn works_with(wrapper_caps: &[&str]) {
    let wrapper = setpriv_exactly(wrapper_caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::spawn_full(&wrapper, &[], &["--leak-after", "1s"]).unwrap();
    daemon.wait_ready(Duration::from_secs(60)).unwrap();
    assert_all_threads(daemon.pid, caps::mask(KEPT));

    let port = cwatch_testkit::daemon::free_port().unwrap();
    let inst = format!("127.0.0.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let client = Load::client("capleak", &[(inst.clone(), 20)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} 20"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    let labels = [("pid", client.pid.to_string()), ("comm", "capleak".into())];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wait_for(
        "20 leaked sockets of capleak",
        Duration::from_secs(10),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            match m.get("cwatch_process_leaked_sockets", &labels) {
                Some(20.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", daemon.log()));
    // Still KEPT after running a while (no thread regained anything).
    assert_all_threads(daemon.pid, caps::mask(KEPT));
}

#[test]
fn root_daemon_keeps_only_the_documented_set() {
    let _serial = serial();
    let daemon = Daemon::start(&[]).unwrap();
    assert_all_threads(daemon.pid, caps::mask(KEPT));
    let log = daemon.log();
    assert!(log.contains("dropped every other capability"), "{log}");
}

#[test]
fn works_with_exactly_the_required_set() {
    let _serial = serial();
    let names = cap_names(REQUIRED);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    works_with(&names);
}

#[test]
fn refuses_to_start_without_bpf_or_perfmon() {
    let _serial = serial();
    // Each of CAP_BPF and CAP_PERFMON is needed to load (CAP_SYS_ADMIN would
    // stand in for both, so it is left out here too).
    for missing in [caps::Capability::CAP_BPF, caps::Capability::CAP_PERFMON] {
        let fewer: Vec<String> = cap_names(REQUIRED)
            .into_iter()
            .filter(|c| *c != missing.to_string() && c != "CAP_SYS_ADMIN")
            .collect();
        let fewer: Vec<&str> = fewer.iter().map(String::as_str).collect();
        let wrapper = setpriv_exactly(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let daemon = Daemon::spawn_full(&wrapper, &[], &[]).unwrap();
        let status = daemon
            .wait_exit_keeping_log(Duration::from_secs(60))
            .unwrap();
        // A permission problem is the operator's to fix: one line naming
        // the missing capability, exit code 2, nothing loaded.
        assert_eq!(status.0.code(), Some(2), "without {missing}: {}", status.1);
        assert!(
            status.1.contains(&missing.to_string()),
            "names {missing}: {}",
            status.1
        );
    }
}

/// The unit's `Key=` line, split on spaces.
fn unit_list(unit: &str, key: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="));
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn unit_and_daemonset_grant_exactly_the_required_set() {
    let _serial = serial();
    let mut want = cap_names(REQUIRED);
    want.sort();
    let unit = read_repo_file("deploy/systemd/cwatch.service");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let mut got = unit_list(&unit, key);
        got.sort();
        assert_eq!(got, want, "{key}= in deploy/systemd/cwatch.service");
    }
    let ds = read_repo_file("deploy/kubernetes/daemonset.yaml");
    let add: Vec<String> = ds
        .lines()
        .skip_while(|l| l.trim() != "add:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(|c| format!("CAP_{c}")))
        .collect();
    let mut add_sorted = add.clone();
    add_sorted.sort();
    assert_eq!(add_sorted, want, "capabilities.add in the DaemonSet");
    assert!(
        ds.contains("drop:\n                - ALL"),
        "the DaemonSet must drop ALL before adding"
    );
}
