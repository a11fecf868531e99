//! The TOML config file: its keys (unknown ones rejected), parsed with the
//! same value parsers as the flags, and the effective config written back as
//! TOML for `cwatch check-config`.
use serde::{Deserialize, Serialize};

use super::values as cli;
use super::{Config, ConfigError};

/// The file's keys. Every value is read as text (or a number) and parsed by
/// the flag's own parser, so errors read the same.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leak_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconcile_interval: Option<String>,
    reconcile_budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holders_refresh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pin_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_buffer_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    track_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    young_sockets: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watch: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_process_series: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_peer_series: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_samples: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_site_series: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    include: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exclude: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    web: Option<FileWeb>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileWeb {
    #[serde(skip_serializing_if = "Option::is_none")]
    config_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
}

pub(super) fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::File {
        path: path.to_string(),
        reason: one_line_toml_error(text, &e),
    })?;
    let bad = |key: &str, value: &str, reason: String| ConfigError::Value {
        path: path.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let mut c = Config::default();
    if let Some(v) = file.listen {
        c.listen = v
            .parse()
            .map_err(|e| bad("listen", &v, format!("{e} (expected ADDR:PORT)")))?;
    }
    if let Some(v) = file.leak_after {
        c.leak_after = cli::parse_positive_duration(&v).map_err(|r| bad("leak_after", &v, r))?;
    }
    if let Some(v) = file.reconcile_interval {
        c.reconcile_interval =
            cli::parse_reconcile_interval(&v).map_err(|r| bad("reconcile_interval", &v, r))?;
    }
    if let Some(v) = file.reconcile_budget {
        c.reconcile_budget_ppm =
            cli::parse_cpu_share(&v).map_err(|r| bad("reconcile_budget", &v, r))?;
    }
    if let Some(v) = file.holders_refresh {
        c.holders_refresh = cli::parse_min_100ms(&v).map_err(|r| bad("holders_refresh", &v, r))?;
    }
    if let Some(v) = file.pin_dir {
        c.pin_dir = super::pin_dir_setting(std::path::Path::new(&v));
    }
    if let Some(v) = file.ring_buffer_size {
        c.ring_buffer_size = cli::parse_size(&v).map_err(|r| bad("ring_buffer_size", &v, r))?;
    }
    if let Some(v) = file.track_after {
        c.track_after = cli::parse_track_after(&v).map_err(|r| bad("track_after", &v, r))?;
    }
    if let Some(v) = file.young_sockets {
        c.young_sockets = cli::parse_young_sockets(&v.to_string())
            .map_err(|r| bad("young_sockets", &v.to_string(), r))?;
    }
    if let Some(list) = file.watch {
        let mut rules = Vec::new();
        for v in list {
            rules.push(cli::parse_watch_rule(&v).map_err(|r| bad("watch", &v, r))?);
        }
        c.watch = super::Watch::from_rules(&rules);
    }
    if let Some(v) = file.log_level {
        c.log_level = cli::parse_log_level(&v).map_err(|r| bad("log_level", &v, r))?;
    }
    if let Some(list) = file.labels {
        let mut labels = Vec::new();
        for v in list {
            labels.push(cli::parse_owner_label(&v).map_err(|r| bad("labels", &v, r))?);
        }
        c.labels.set(&labels);
    }
    if let Some(v) = file.process_key {
        c.labels.process_key = cli::parse_process_key(&v).map_err(|r| bad("process_key", &v, r))?;
    }
    if let Some(v) = file.max_process_series {
        c.max_process_series = v;
    }
    if let Some(v) = file.max_peer_series {
        c.max_peer_series = v;
    }
    if let Some(v) = file.stack_samples {
        c.stack_samples = cli::parse_stack_samples(&v.to_string())
            .map_err(|r| bad("stack_samples", &v.to_string(), r))?;
    }
    if let Some(v) = file.max_site_series {
        c.max_site_series = v;
    }
    for (key, list, out) in [
        ("include", file.include, &mut c.filters.include),
        ("exclude", file.exclude, &mut c.filters.exclude),
    ] {
        for v in list.unwrap_or_default() {
            out.push(cli::parse_filter_rule(&v).map_err(|r| bad(key, &v, r))?);
        }
    }
    if let Some(web) = file.web {
        if let Some(v) = web.config_file {
            c.web.config_file = Some(v.into());
        }
        if let Some(v) = web.request_timeout {
            c.web.request_timeout =
                cli::parse_positive_duration(&v).map_err(|r| bad("web.request_timeout", &v, r))?;
        }
        if let Some(v) = web.max_connections {
            c.web.max_connections = cli::parse_max_connections(&v.to_string())
                .map_err(|r| bad("web.max_connections", &v.to_string(), r))?;
        }
    }
    Ok(c)
}

/// Every key spelled out, as a file that `parse` reads back to `c`.
pub(super) fn to_toml(c: &Config) -> String {
    let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let file = FileConfig {
        listen: Some(c.listen.to_string()),
        leak_after: Some(duration(c.leak_after)),
        reconcile_interval: Some(duration(c.reconcile_interval)),
        reconcile_budget: Some(cli::format_cpu_share(c.reconcile_budget_ppm)),
        holders_refresh: Some(duration(c.holders_refresh)),
        pin_dir: Some(
            c.pin_dir
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        ),
        ring_buffer_size: Some(cli::format_size(c.ring_buffer_size)),
        track_after: Some(duration(c.track_after)),
        young_sockets: Some(c.young_sockets),
        watch: Some(c.watch.rules().iter().map(|r| r.to_string()).collect()),
        log_level: Some(c.log_level.clone()),
        labels: Some(c.labels.enabled().iter().map(|l| l.to_string()).collect()),
        process_key: Some(c.labels.process_key.to_string()),
        max_process_series: Some(c.max_process_series),
        max_peer_series: Some(c.max_peer_series),
        stack_samples: Some(c.stack_samples),
        max_site_series: Some(c.max_site_series),
        include: Some(c.filters.include.iter().map(|r| r.to_string()).collect()),
        exclude: Some(c.filters.exclude.iter().map(|r| r.to_string()).collect()),
        web: Some(FileWeb {
            config_file: c.web.config_file.as_ref().map(|p| p.display().to_string()),
            request_timeout: Some(duration(c.web.request_timeout)),
            max_connections: Some(c.web.max_connections),
        }),
    };
    toml::to_string(&file).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
}

/// toml's errors span several lines with a source excerpt; keep the message
/// and the line number.
fn one_line_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}
