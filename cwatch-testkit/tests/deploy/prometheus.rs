//! A real Prometheus scraping a real cwatch while a leak happens, incident
//! style: a client with 360 connections to each of two instances, one
//! instance goes away, and a prompt client that closes its sockets at once.
//! Prometheus must hold the right series with the values `ss` shows; the
//! real alert rules (with `for:` shortened) must fire for the leaking process
//! and the dead peer and not for the prompt one; and every query of the
//! Grafana dashboard must run without error and return data (the fd panel
//! with the leaking process's fds and limit as /proc has them). Then the
//! recorded series are replayed through promtool against the unmodified
//! rules (replay.rs).
use std::time::Duration;

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for};
use serde_json::Value;

use crate::{
    common::{read_repo_file, serial},
    promserver::{Prometheus, rules_with_for},
    replay::Expect,
};

const WIDTH: usize = 360;

/// Every `expr` of every panel of the dashboard (with its title).
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read_repo_file("deploy/grafana/cwatch.json"))
        .expect("deploy/grafana/cwatch.json is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

/// Grafana's variables as a dashboard user would have them: all hosts, a
/// rate window of a few scrapes, the last minute.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", "20s")
        .replace("$__range", "1m")
        .replace("$instance", ".*");
    assert!(!out.contains('$'), "unknown variable left in {out}");
    out
}

fn alert_for<'a>(alerts: &'a [Value], name: &str, label: &str, value: &str) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
}

#[test]
fn prometheus_scrapes_a_leak_alerts_fire_and_dashboard_queries_answer() {
    let _serial = serial();
    let ips = ["127.0.2.1", "127.0.2.2"];
    let port = cwatch_testkit::daemon::free_port().unwrap();
    let instances: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();

    let daemon = Daemon::start(&["--leak-after", "2s"]).unwrap();
    let prom = Prometheus::start(daemon.addr, &rules_with_for("3s")).unwrap();

    let mut server = Load::server(&instances).unwrap();
    let targets: Vec<(String, usize)> = instances.iter().map(|i| (i.clone(), WIDTH)).collect();
    let leaky = Load::client("promleak", &targets, "leak").unwrap();
    let prompt = Load::client("promclose", &targets[..1], "close").unwrap();
    server
        .ask(
            &format!("wait-accepted {} {}", instances[0], 2 * WIDTH),
            "accepted",
        )
        .unwrap();
    server
        .ask(
            &format!("wait-accepted {} {WIDTH}", instances[1]),
            "accepted",
        )
        .unwrap();
    // The first instance goes away.
    let closed_at = unix_now();
    server
        .ask(&format!("close {}", instances[0]), "closed")
        .unwrap();

    // Ground truth: the leaking client holds WIDTH sockets in CLOSE_WAIT to
    // the dead instance, the prompt one none.
    wait_for("ss: the leak", Duration::from_secs(10), || {
        let socks: Vec<_> = cwatch_testkit::ss::close_wait()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| s.peer.port() == port)
            .collect();
        let leaked = socks
            .iter()
            .filter(|s| s.users.iter().any(|u| u.pid == leaky.pid))
            .count();
        let prompt_held = socks
            .iter()
            .filter(|s| s.users.iter().any(|u| u.pid == prompt.pid))
            .count();
        if leaked == WIDTH && prompt_held == 0 {
            Ok(())
        } else {
            Err(format!("leaky {leaked}, prompt {prompt_held}"))
        }
    })
    .unwrap();

    // The series in Prometheus, as scraped.
    let pid = leaky.pid.to_string();
    let leaked_q =
        format!("cwatch_process_leaked_sockets{{job=\"cwatch\",pid=\"{pid}\",comm=\"promleak\"}}");
    wait_for(
        "Prometheus: 360 leaked for promleak",
        Duration::from_secs(90),
        || match prom.value(&leaked_q).map_err(|e| e.to_string())? {
            Some(v) if v == WIDTH as f64 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\ntargets: {}\nprometheus log:\n{}",
            prom.targets(),
            prom.log()
        )
    });
    let one = |expr: String| prom.value(&expr).unwrap();
    assert_eq!(
        one(format!(
            "cwatch_process_close_wait_sockets{{pid=\"{pid}\"}}"
        )),
        Some(WIDTH as f64)
    );
    assert_eq!(
        one(format!(
            "cwatch_peer_leaked_sockets{{peer_addr=\"{}\",peer_port=\"{port}\"}}",
            ips[0]
        )),
        Some(WIDTH as f64)
    );
    assert_eq!(
        one(format!(
            "cwatch_peer_close_wait_sockets{{peer_addr=\"{}\",peer_port=\"{port}\"}}",
            ips[1]
        )),
        None,
        "the live instance has no CLOSE_WAIT"
    );
    assert_eq!(
        one(format!(
            "cwatch_process_close_wait_sockets{{pid=\"{}\"}}",
            prompt.pid
        )),
        None,
        "the prompt client holds nothing"
    );
    let age = one(format!(
        "cwatch_process_oldest_close_wait_seconds{{pid=\"{pid}\"}}"
    ))
    .unwrap();
    assert!(age >= 2.0, "oldest age {age} (leaked means ≥ leak-after)");
    // Present (its value is host-wide: other load on this host may move it).
    assert!(one("cwatch_events_lost_total{job=\"cwatch\"}".into()).is_some());
    assert_eq!(one("up{job=\"cwatch\"}".into()), Some(1.0));

    // The real rules (for: 3s) fire for the leaking process and the dead
    // peer, and for nothing of the prompt client or the live peer.
    let alerts = wait_for("alerts firing", Duration::from_secs(90), || {
        let alerts = prom.alerts().map_err(|e| e.to_string())?;
        let firing = |name, label, value| {
            alert_for(&alerts, name, label, value).is_some_and(|a| a["state"] == "firing")
        };
        if firing("CwatchProcessLeakingSockets", "pid", pid.as_str())
            && firing("CwatchPeerMassLeak", "peer_addr", ips[0])
        {
            Ok(alerts)
        } else {
            Err(format!("{alerts:?}"))
        }
    })
    .unwrap();
    let proc_alert = alert_for(&alerts, "CwatchProcessLeakingSockets", "pid", &pid).unwrap();
    assert_eq!(proc_alert["labels"]["comm"], "promleak");
    let summary = proc_alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "promleak (pid {pid}) on {} leaks sockets: 360",
            daemon.addr
        )),
        "{summary}"
    );
    let peer_alert = alert_for(&alerts, "CwatchPeerMassLeak", "peer_addr", ips[0]).unwrap();
    assert_eq!(peer_alert["labels"]["peer_port"], port.to_string());
    assert_eq!(peer_alert["labels"]["severity"], "critical");
    let prompt_pid = prompt.pid.to_string();
    assert!(alert_for(&alerts, "CwatchProcessLeakingSockets", "pid", &prompt_pid).is_none());
    assert!(alert_for(&alerts, "CwatchPeerMassLeak", "peer_addr", ips[1]).is_none());
    // cwatch is up and scraped. (Lost events and other processes' leaks are
    // host-wide: other load on this host may raise them, so they are not
    // asserted here; cwatch-rules.test.yml covers them.)
    for name in ["CwatchDown", "CwatchAbsent"] {
        assert!(
            alerts.iter().all(|a| a["labels"]["alertname"] != name),
            "{name} must not fire for a healthy cwatch: {alerts:?}"
        );
    }

    // Every dashboard query answers with data during the leak.
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{} queries", queries.len());
    for (title, expr) in &queries {
        let expr = substitute(expr);
        let result = prom
            .query(&expr)
            .unwrap_or_else(|e| panic!("panel {title:?}: {expr} failed: {e:#}"));
        assert!(
            !result.is_empty(),
            "panel {title:?}: {expr} returned no data"
        );
    }
    // The per-process panel shows the leak with its owner.
    let (_, per_process) = queries
        .iter()
        .find(|(t, _)| t == "Leaked sockets per process")
        .expect("per-process panel");
    let rows = prom.query(&substitute(per_process)).unwrap();
    assert!(
        rows.iter().any(|r| r["metric"]["pid"] == pid.as_str()
            && r["metric"]["comm"] == "promleak"
            && r["value"][1] == "360"),
        "{rows:?}"
    );

    // The fd panel: the leaking process's open fds (its 720 sockets and
    // more) under its soft limit, both as /proc has them.
    let fd_panel: Vec<&String> = queries
        .iter()
        .filter(|(t, _)| t == "Open fds vs fd limit of leaking processes")
        .map(|(_, e)| e)
        .collect();
    assert_eq!(fd_panel.len(), 2, "open and limit");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let value_of = |expr: &str| {
        prom.query(&substitute(expr))
            .unwrap()
            .into_iter()
            .find(|r| r["metric"]["pid"] == pid.as_str() && r["metric"]["comm"] == "promleak")
            .map(|r| r["value"][1].as_str().unwrap().to_string())
    };
    assert_eq!(
        value_of(fd_panel[0]),
        Some(open_fds.to_string()),
        "open fds as /proc/{pid}/fd"
    );
    assert!(open_fds >= 2 * WIDTH, "{open_fds}");
    assert_eq!(value_of(fd_panel[1]), Some(soft), "the soft RLIMIT_NOFILE");

    // The recorded series, replayed through promtool against the unmodified
    // rules (1 s scrapes as 1 m): the same alerts, with the real `for:`.
    let peer_alert = peer_alert.clone();
    let proc_alert = proc_alert.clone();
    crate::replay::replay(
        &prom,
        &[
            format!("cwatch_process_leaked_sockets{{pid=\"{pid}\"}}"),
            format!(
                "cwatch_peer_leaked_sockets{{peer_addr=\"{}\",peer_port=\"{port}\"}}",
                ips[0]
            ),
        ],
        (closed_at - 3.0).floor(),
        &[
            Expect {
                alert: &proc_alert,
                expr: 0,
                hold_minutes: 15,
            },
            Expect {
                alert: &peer_alert,
                expr: 1,
                hold_minutes: 5,
            },
        ],
    );
    drop(prompt);
    drop(leaky);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
