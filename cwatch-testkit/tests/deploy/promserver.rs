//! A real Prometheus server (Debian's `prometheus`) for a test: on a free
//! loopback port, with its config, rules and TSDB in a temporary directory,
//! scraping one cwatch every second; stopped by pid when dropped. Queries go
//! through its HTTP API.
use std::{
    fs::File,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use cwatch_testkit::{daemon::free_port, wait_for};
use serde_json::Value;

use crate::common::{TempDir, read_repo_file, tool};

pub struct Prometheus {
    child: Child,
    agent: ureq::Agent,
    pub addr: SocketAddr,
    dir: TempDir,
}

/// deploy/prometheus/cwatch-rules.yml with every `for:` shortened to
/// `hold`, so that an alert can fire within a test.
pub fn rules_with_for(hold: &str) -> String {
    read_repo_file("deploy/prometheus/cwatch-rules.yml")
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!(
                "{}for: {hold}",
                &line[..line.len() - line.trim_start().len()]
            ),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (job "cwatch") every 2 s and
    /// evaluating `rules` every second; returns once it is ready.
    pub fn start(target: SocketAddr, rules: &str) -> anyhow::Result<Prometheus> {
        let binary = tool("prometheus");
        let dir = TempDir::new("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: cwatch\n    scrape_interval: 2s\n    scrape_timeout: 2s\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        std::fs::write(dir.path().join("rules.yml"), rules)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let prom = Prometheus {
            child,
            agent,
            addr,
            dir,
        };
        wait_for(
            "prometheus /-/ready",
            Duration::from_secs(60),
            || match prom.get("/-/ready", &[]) {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(format!("{e:#}")),
            },
        )
        .with_context(|| format!("prometheus log:\n{}", prom.log()))?;
        Ok(prom)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        let mut req = self.agent.get(&format!("http://{}{path}", self.addr));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut response = req.call()?;
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_to_string()?))
    }

    /// `GET /api/v1/<path>`; fails unless the API says `success`; returns
    /// `data`.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let (status, body) = self.get(&format!("/api/v1/{path}"), query)?;
        let json: Value = serde_json::from_str(&body)
            .with_context(|| format!("{path} answered {status}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            bail!("{path} {query:?} answered {status}: {body}");
        }
        Ok(json["data"].clone())
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("query", &[("query", expr)])?;
        match &data["result"] {
            Value::Array(items) => Ok(items.clone()),
            other => Ok(vec![other.clone()]),
        }
    }

    /// The value of a single-series instant query, `None` when it has none.
    pub fn value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(expr)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => {
                let text = one["value"][1].as_str().context("no value")?;
                Ok(Some(text.parse()?))
            }
            many => bail!("{expr} gave {} series: {many:?}", many.len()),
        }
    }

    /// The scrape targets' health and last error, for failure messages.
    pub fn targets(&self) -> String {
        match self.api("targets", &[]) {
            Ok(data) => data["activeTargets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
            Err(e) => format!("{e:#}"),
        }
    }

    /// The alerts Prometheus holds now (pending and firing).
    pub fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        let data = self.api("alerts", &[])?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            for _ in 0..200 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
