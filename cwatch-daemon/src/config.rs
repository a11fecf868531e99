/*!
The validated [`Config`] that `cwatch run` passes down: defaults, then the
TOML file (`--config`, unknown keys rejected), then the flags on top.

Errors here are the user's to fix: each is one line naming the problem and the
offending value or file, and `main` exits with code 2 for them.
*/
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    cli::{LsArgs, RunArgs},
    filters::Filters,
    labels::LabelConfig,
};

#[path = "config_file.rs"]
mod file;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";
pub const DEFAULT_LEAK_AFTER: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_HOLDERS_REFRESH: Duration = Duration::from_secs(5);
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/cwatch";
pub const DEFAULT_RING_BUFFER_SIZE: u32 = 8 << 20;
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_MAX_PROCESS_SERIES: usize = 500;
pub const DEFAULT_MAX_PEER_SERIES: usize = 1000;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The HTTP endpoint's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebConfig {
    /// exporter-toolkit web config (TLS, basic auth); `None`: plain HTTP, no auth.
    pub config_file: Option<PathBuf>,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

/// Everything `cwatch run` needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub leak_after: Duration,
    pub reconcile_interval: Duration,
    /// How often the fds holding tracked sockets are re-checked.
    pub holders_refresh: Duration,
    /// `None`: maps are not pinned.
    pub pin_dir: Option<PathBuf>,
    pub ring_buffer_size: u32,
    pub log_level: String,
    pub labels: LabelConfig,
    /// 0 = no limit.
    pub max_process_series: usize,
    /// 0 = no limit.
    pub max_peer_series: usize,
    pub filters: Filters,
    pub web: WebConfig,
    /// The file the config came from (re-read on SIGHUP).
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            leak_after: DEFAULT_LEAK_AFTER,
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            holders_refresh: DEFAULT_HOLDERS_REFRESH,
            pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
            ring_buffer_size: DEFAULT_RING_BUFFER_SIZE,
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            labels: LabelConfig::default(),
            max_process_series: DEFAULT_MAX_PROCESS_SERIES,
            max_peer_series: DEFAULT_MAX_PEER_SERIES,
            filters: Filters::default(),
            web: WebConfig {
                config_file: None,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
            },
            source: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("config file {path}: {key} = {value:?}: {reason}")]
    Value {
        path: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{flag} {value}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Merges the config file (if any) under the flags and validates.
    pub fn from_run_args(args: &RunArgs) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => load_file(path)?,
            None => Config::default(),
        };
        apply_flags(&mut config, args);
        config.validate()?;
        Ok(config)
    }

    /// Checks beyond the per-value parsers.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.pin_dir
            && !dir.is_absolute()
        {
            return Err(ConfigError::Invalid {
                flag: "--pin-dir",
                value: dir.display().to_string(),
                reason: "must be an absolute path on a bpf filesystem".into(),
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        file::to_toml(self)
    }
}

fn apply_flags(config: &mut Config, args: &RunArgs) {
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.leak_after {
        config.leak_after = v;
    }
    if let Some(v) = args.reconcile_interval {
        config.reconcile_interval = v;
    }
    if let Some(v) = args.holders_refresh {
        config.holders_refresh = v;
    }
    if let Some(dir) = &args.pin_dir {
        config.pin_dir = pin_dir_setting(dir);
    }
    if let Some(v) = args.ring_buffer_size {
        config.ring_buffer_size = v;
    }
    if let Some(v) = &args.log_level {
        config.log_level = v.clone();
    }
    if !args.labels.is_empty() {
        config.labels.set(&args.labels);
    }
    if let Some(v) = args.process_key {
        config.labels.process_key = v;
    }
    if let Some(v) = args.max_process_series {
        config.max_process_series = v;
    }
    if let Some(v) = args.max_peer_series {
        config.max_peer_series = v;
    }
    if !args.include.is_empty() {
        config.filters.include = args.include.clone();
    }
    if !args.exclude.is_empty() {
        config.filters.exclude = args.exclude.clone();
    }
    if let Some(v) = &args.web_config_file {
        config.web.config_file = Some(v.clone());
    }
    if let Some(v) = args.web_request_timeout {
        config.web.request_timeout = v;
    }
    if let Some(v) = args.web_max_connections {
        config.web.max_connections = v;
    }
}

/// `""` (or `none`) means "do not pin".
pub fn pin_dir_setting(value: &Path) -> Option<PathBuf> {
    let text = value.as_os_str();
    (!text.is_empty() && text != "none").then(|| value.to_path_buf())
}

/// The listen address `cwatch ls` should ask.
pub fn ls_target(args: &LsArgs) -> Result<SocketAddr, ConfigError> {
    if let Some(listen) = args.listen {
        return Ok(listen);
    }
    match &args.config {
        Some(path) => Ok(load_file(path)?.listen),
        None => Ok(Config::default().listen),
    }
}

/// The daemon `cwatch ls` asks, and the leak-after it judges by when it
/// reads the kernel itself (from `--config`, else the default).
pub fn ls_settings(args: &LsArgs) -> Result<(SocketAddr, Duration), ConfigError> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => Config::default(),
    };
    Ok((args.listen.unwrap_or(file.listen), file.leak_after))
}

/// Reads and parses a config file over the defaults.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut config = parse_file(&shown, &text)?;
    config.source = Some(path.to_path_buf());
    config.validate()?;
    Ok(config)
}

/// Parses config file text over the defaults (`path` only names it in errors).
pub fn parse_file(path: &str, text: &str) -> Result<Config, ConfigError> {
    file::parse(path, text)
}

/// Re-reads `args.config` with the same flags on top (SIGHUP).
pub fn reload(args: &RunArgs) -> Result<Config, ConfigError> {
    Config::from_run_args(args)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
