//! Recorded series → promtool: the samples a real Prometheus scraped from a
//! real cwatch during a leak are replayed through `promtool test rules`
//! against the unmodified deploy/prometheus/cwatch-rules.yml, one scrape
//! (1 s) per minute of rule time, so the real `for: 15m` and `for: 5m` are
//! reached. The expected alerts are the ones the live Prometheus showed,
//! labels and rendered annotations alike: the real series and the real rules
//! must tell the same story under promtool's clock.
use std::process::Command;

use serde_json::{Value, json};

use crate::{
    common::{TempDir, repo_file, run_ok, tool},
    promserver::Prometheus,
};

/// `expr` over [start, end] at 1 s steps as (labels, promtool values), one
/// entry per series; a step without a sample is `_`.
fn recorded(prom: &Prometheus, expr: &str, start: f64, end: f64) -> Vec<(Value, String)> {
    let data = prom
        .api(
            "query_range",
            &[
                ("query", expr),
                ("start", &format!("{start:.3}")),
                ("end", &format!("{end:.3}")),
                ("step", "1"),
            ],
        )
        .unwrap();
    let steps = (end - start).round() as usize + 1;
    let mut out = Vec::new();
    for series in data["result"].as_array().unwrap() {
        let mut values = vec!["_".to_string(); steps];
        for point in series["values"].as_array().unwrap() {
            let at = ((point[0].as_f64().unwrap() - start).round()) as usize;
            if at < steps {
                values[at] = point[1].as_str().unwrap().to_string();
            }
        }
        out.push((series["metric"].clone(), values.join(" ")));
    }
    out
}

/// `name{k="v",…}` for promtool.
fn series_name(metric: &Value) -> String {
    let labels = metric.as_object().unwrap();
    let name = labels["__name__"].as_str().unwrap();
    let inner: Vec<String> = labels
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap()))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// The alert as promtool expects it: labels without alertname, annotations
/// as rendered.
fn expected(alert: &Value) -> Value {
    let mut labels = alert["labels"].clone();
    labels.as_object_mut().unwrap().remove("alertname");
    json!({"exp_labels": labels, "exp_annotations": alert["annotations"]})
}

/// One alert to check in the replay: as the live Prometheus showed it, the
/// index in `exprs` of the series that drives it, and its `for:` in minutes.
pub struct Expect<'a> {
    pub alert: &'a Value,
    pub expr: usize,
    pub hold_minutes: u64,
}

/// Replays `exprs` recorded from `start` until long enough for every
/// alert's `for:` (at most 90 s). Each alert must fire at the end, and must
/// not yet fire two minutes before its `for:` has passed since its series
/// first went above zero.
pub fn replay(prom: &Prometheus, exprs: &[String], start: f64, alerts: &[Expect]) {
    let deadline = unix_now() + 90.0;
    let (input, first_nonzero, last_minute) = loop {
        let end = (unix_now() - 1.5).floor();
        let mut input = Vec::new();
        let mut first_nonzero = Vec::new();
        for expr in exprs {
            let series = recorded(prom, expr, start, end);
            assert_eq!(series.len(), 1, "{expr} recorded {} series", series.len());
            let (metric, values) = &series[0];
            let first = values
                .split(' ')
                .position(|v| v.parse::<f64>().is_ok_and(|x| x > 0.0))
                .unwrap_or_else(|| panic!("{expr} never above zero: {values}"));
            first_nonzero.push(first as u64);
            input.push(json!({"series": series_name(metric), "values": values}));
        }
        let last_minute = (end - start).round() as u64;
        let long_enough = alerts
            .iter()
            .all(|e| last_minute >= first_nonzero[e.expr] + e.hold_minutes + 2);
        if long_enough {
            break (input, first_nonzero, last_minute);
        }
        assert!(
            unix_now() < deadline,
            "recording still too short: {last_minute} samples, {first_nonzero:?}"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    let mut cases = Vec::new();
    for e in alerts {
        let name = &e.alert["labels"]["alertname"];
        let fires_at = first_nonzero[e.expr] + e.hold_minutes;
        cases.push(
            json!({"eval_time": format!("{last_minute}m"), "alertname": name,
                          "exp_alerts": [expected(e.alert)]}),
        );
        cases.push(
            json!({"eval_time": format!("{}m", fires_at - 2), "alertname": name,
                          "exp_alerts": []}),
        );
    }
    let test = json!({
        "rule_files": [repo_file("deploy/prometheus/cwatch-rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "name": "replay of a real cwatch run, 1 s scrapes as 1 m",
            "interval": "1m",
            "input_series": input,
            "alert_rule_test": cases,
        }],
    });
    let dir = TempDir::new("replay");
    let file = dir.path().join("replay.test.yml");
    std::fs::write(&file, serde_json::to_string_pretty(&test).unwrap()).unwrap();
    let out = run_ok(
        Command::new(tool("promtool"))
            .args(["test", "rules"])
            .arg(&file),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
