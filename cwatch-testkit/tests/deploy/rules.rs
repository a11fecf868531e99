//! The alert rules and the scrape config with promtool: `check rules`,
//! `check config`, and the unit tests in cwatch-rules.test.yml — which must
//! test every alert of the rules file both firing and not firing. A broken
//! expectation must make promtool fail (checked on a copy).
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use crate::common::{TempDir, output, read_repo_file, repo_file, run_ok, serial, tool};

/// Alert names defined in the rules file.
fn alert_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|s| s.trim().to_string())
        .collect()
}

/// For each alert name in the test file: (has a firing case, has a
/// not-firing case). A case is `alertname: X` followed by `exp_alerts: []`
/// (not firing) or `exp_alerts:` with entries (firing).
fn cases(tests: &str) -> BTreeMap<String, (bool, bool)> {
    let mut out: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            current = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            if let Some(name) = current.take() {
                let entry = out.entry(name).or_default();
                if rest.trim() == "[]" {
                    entry.1 = true;
                } else {
                    entry.0 = true;
                }
            }
        }
    }
    out
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    let _serial = serial();
    let promtool = tool("promtool");
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(repo_file("deploy/prometheus/cwatch-rules.yml")),
    );
    run_ok(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(repo_file("deploy/prometheus/prometheus.yml")),
    );
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "cwatch-rules.test.yml"])
            .current_dir(repo_file("deploy/prometheus")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let _serial = serial();
    let names = alert_names(&read_repo_file("deploy/prometheus/cwatch-rules.yml"));
    assert!(names.len() >= 7, "{names:?}");
    let tested = cases(&read_repo_file("deploy/prometheus/cwatch-rules.test.yml"));
    for name in &names {
        assert_eq!(
            tested.get(name),
            Some(&(true, true)),
            "{name} needs a firing and a not-firing case in cwatch-rules.test.yml"
        );
    }
    // Incident-shaped input and the healthy short-lived service are there.
    let tests = read_repo_file("deploy/prometheus/cwatch-rules.test.yml");
    assert!(tests.contains("nightly step of 360 leaked sockets per removed peer"));
    assert!(tests.contains("healthy short-lived CLOSE_WAIT"));
}

#[test]
fn promtool_fails_a_wrong_expectation() {
    let _serial = serial();
    // The same tests against a rules file whose mass-leak threshold is 361:
    // the incident's 360 per dead peer no longer fire, and promtool says so.
    let dir = TempDir::new("promtool");
    let rules = read_repo_file("deploy/prometheus/cwatch-rules.yml");
    assert!(rules.contains("cwatch_peer_leaked_sockets >= 100"));
    std::fs::write(
        dir.path().join("cwatch-rules.yml"),
        rules.replace(
            "cwatch_peer_leaked_sockets >= 100",
            "cwatch_peer_leaked_sockets >= 361",
        ),
    )
    .unwrap();
    std::fs::copy(
        repo_file("deploy/prometheus/cwatch-rules.test.yml"),
        dir.path().join("cwatch-rules.test.yml"),
    )
    .unwrap();
    let out = output(
        Command::new(tool("promtool"))
            .args(["test", "rules", "cwatch-rules.test.yml"])
            .current_dir(dir.path()),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "promtool passed a broken rule:\n{text}"
    );
    assert!(text.contains("CwatchPeerMassLeak"), "{text}");
}
