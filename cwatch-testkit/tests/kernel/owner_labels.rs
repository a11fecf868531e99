//! Optional owner labels from /proc on real processes: a client moved into a
//! cgroup named like a systemd unit gets that `unit` label (and `exe`), the
//! `unit:` filter selects it, and `--process-key unit` makes one series per
//! unit.
use std::{path::PathBuf, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, prom::Scrape, wait_for};

use crate::common::{serial, ss_to_port};

const FAMILY: &str = "cwatch_process_close_wait_sockets";

/// The cgroup2 mount (the unified hierarchy), from /proc/self/mountinfo.
fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
        })
        .expect("no cgroup2 mount: this test needs the unified cgroup hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

/// A cgroup named like a unit, removed on drop (its processes moved back).
struct UnitCgroup(PathBuf);

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        let root = self.0.parent().unwrap().join("cgroup.procs");
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(&root, pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn wait_sum(daemon: &Daemon, want: f64) -> Scrape {
    wait_for("the family total", Duration::from_secs(20), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        let sum: f64 = m
            .samples
            .iter()
            .filter(|s| s.name == FAMILY)
            .map(|s| s.value)
            .sum();
        if sum == want {
            Ok(m)
        } else {
            Err(format!("{sum}\n{}", m.text))
        }
    })
    .unwrap()
}

#[test]
fn unit_and_exe_labels_filters_and_unit_keys() {
    let _serial = serial();
    let unit = format!("cwatch-test-{}.service", std::process::id());
    let cgroup = UnitCgroup(cgroup2_root().join(&unit));
    std::fs::create_dir_all(&cgroup.0).unwrap();
    let port = crate::common::free_port_on(&["127.0.5.1"]);
    let inst = format!("127.0.5.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let in_unit = Load::client("unit-a", &[(inst.clone(), 3)], "leak").unwrap();
    let outside = Load::client("unit-b", &[(inst.clone(), 2)], "leak").unwrap();
    std::fs::write(cgroup.0.join("cgroup.procs"), in_unit.pid.to_string()).unwrap();
    server
        .ask(&format!("wait-accepted {inst} 5"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    assert_eq!(ss_to_port(port).len(), 5);
    // Started after the move: both find the sockets through sock_diag.
    let include = format!("peer_port:{port}");
    let labelled = Daemon::start(&["--include", &include, "--label", "unit,exe"]).unwrap();
    let by_unit = Daemon::start(&[
        "--include",
        &format!("unit:{unit}"),
        "--process-key",
        "unit",
    ])
    .unwrap();

    let m = wait_sum(&labelled, 5.0);
    let exe = std::fs::read_link(format!("/proc/{}/exe", in_unit.pid)).unwrap();
    let exe = exe.display().to_string();
    let a = in_unit.pid.to_string();
    let b = outside.pid.to_string();
    assert_eq!(
        m.get(
            FAMILY,
            &[
                ("pid", &a),
                ("comm", "unit-a"),
                ("unit", &unit),
                ("exe", &exe)
            ]
        ),
        Some(3.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            FAMILY,
            &[("pid", &b), ("comm", "unit-b"), ("unit", ""), ("exe", &exe)]
        ),
        Some(2.0),
        "{}",
        m.text
    );

    let m = wait_sum(&by_unit, 3.0);
    let series: Vec<_> = m.samples.iter().filter(|s| s.name == FAMILY).collect();
    assert_eq!(series.len(), 1, "{}", m.text);
    assert_eq!(
        m.get(FAMILY, &[("pid", "*"), ("comm", "*"), ("unit", &unit)]),
        Some(3.0),
        "{}",
        m.text
    );
    let api = by_unit.sockets().unwrap();
    assert!(
        api.len() == 3 && api.iter().all(|s| s["pid"] == in_unit.pid),
        "{api:?}"
    );
    drop((labelled, by_unit, in_unit, outside, server, cgroup));
}
