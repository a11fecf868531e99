/*!
The validated [`Config`] that `cwatch run` passes down: defaults, then the
TOML file ([`file`]: `--config`, unknown keys rejected), then the flags on
top (applied by the command line, `crate::cli`). Every value goes through
the same parsers ([`values`]) wherever it comes from; [`filters`] and
[`labels`] are the include/exclude rules and the optional labels.

Errors here are the user's to fix: each is one line naming the problem and the
offending value or file, and `main` exits with code 2 for them.
*/
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

mod file;
pub mod filters;
pub mod labels;
pub mod values;

use filters::Filters;
use labels::LabelConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";
pub const DEFAULT_LEAK_AFTER: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// 0.5 % of one core for the safety-net full passes.
pub const DEFAULT_RECONCILE_BUDGET_PPM: u32 = 5_000;
pub const DEFAULT_HOLDERS_REFRESH: Duration = Duration::from_secs(5);
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/cwatch";
/// 32,768 events of 128 bytes: only sockets past the grace, sockets not
/// seen entering, dead ones and wake-ups send one. The daemon maps the ring
/// twice over (as every BPF ring reader does), so it shows twice in its RSS.
pub const DEFAULT_RING_BUFFER_SIZE: u32 = cwatch_common::EVENTS_RING_BYTES;
pub const DEFAULT_TRACK_AFTER: Duration = Duration::from_millis(200);
pub const DEFAULT_YOUNG_SOCKETS: u32 = 16_384;
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_MAX_PROCESS_SERIES: usize = 500;
pub const DEFAULT_MAX_PEER_SERIES: usize = 1000;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Connect-time stack samples the kernel holds at once (`SAMPLES`).
pub const DEFAULT_STACK_SAMPLES: u32 = cwatch_common::SAMPLES_ENTRIES;
pub const DEFAULT_MAX_SITE_SERIES: usize = 10;
pub const DEFAULT_KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whose connect() the kernel records (owner, and where it was called):
/// the watch list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Processes once they hold a leaked socket.
    pub leakers: bool,
    /// Processes with these names.
    pub comms: Vec<String>,
    /// Every process (debugging: every connection pays for it).
    pub all: bool,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            leakers: true,
            comms: Vec::new(),
            all: false,
        }
    }
}

impl Watch {
    /// The settings of `rules` (`leakers`, `comm:NAME`, `all`, `none`).
    pub fn from_rules(rules: &[WatchRule]) -> Self {
        let mut w = Self {
            leakers: false,
            comms: Vec::new(),
            all: false,
        };
        for rule in rules {
            match rule {
                WatchRule::Leakers => w.leakers = true,
                WatchRule::All => w.all = true,
                WatchRule::Comm(c) => w.comms.push(c.clone()),
                WatchRule::None => {}
            }
        }
        w
    }

    /// Back to rules, as the file writes them.
    pub fn rules(&self) -> Vec<WatchRule> {
        let mut out = Vec::new();
        if self.leakers {
            out.push(WatchRule::Leakers);
        }
        if self.all {
            out.push(WatchRule::All);
        }
        out.extend(self.comms.iter().cloned().map(WatchRule::Comm));
        if out.is_empty() {
            out.push(WatchRule::None);
        }
        out
    }
}

/// One `--watch` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchRule {
    Leakers,
    All,
    None,
    Comm(String),
}

impl std::str::FromStr for WatchRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "leakers" => Ok(Self::Leakers),
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("comm:") {
                Some(name) if !name.is_empty() && name.len() < cwatch_common::TASK_COMM_LEN => {
                    Ok(Self::Comm(name.to_string()))
                }
                Some(_) => Err("a comm is 1 to 15 bytes".into()),
                None => Err(format!(
                    "unknown watch rule {s:?}; use leakers, all, none or comm:NAME"
                )),
            },
        }
    }
}

impl std::fmt::Display for WatchRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Leakers => f.write_str("leakers"),
            Self::All => f.write_str("all"),
            Self::None => f.write_str("none"),
            Self::Comm(c) => write!(f, "comm:{c}"),
        }
    }
}

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
    /// The share of one core (millionths) the safety-net full passes may
    /// use (`reconcile::schedule`).
    pub reconcile_budget_ppm: u32,
    /// How often the fds holding tracked sockets are re-checked.
    pub holders_refresh: Duration,
    /// `None`: maps are not pinned.
    pub pin_dir: Option<PathBuf>,
    pub ring_buffer_size: u32,
    /// A socket is tracked (gauges, API) once in CLOSE_WAIT this long;
    /// shorter ones are only counted.
    pub track_after: Duration,
    /// Entries of the kernel's `YOUNG` map.
    pub young_sockets: u32,
    /// Whose connect() the kernel records.
    pub watch: Watch,
    pub log_level: String,
    pub labels: LabelConfig,
    /// 0 = no limit.
    pub max_process_series: usize,
    /// 0 = no limit.
    pub max_peer_series: usize,
    /// Connect-time stack samples of watched processes the kernel holds at
    /// once (leak provenance); 0 = no stack capture.
    pub stack_samples: u32,
    /// Sites of `cwatch_leak_site_sockets` (the rest fold into `[other]`);
    /// 0 = no limit.
    pub max_site_series: usize,
    pub filters: Filters,
    pub web: WebConfig,
    /// The file the config came from (re-read on SIGHUP).
    pub source: Option<PathBuf>,
    /// The kernel's BTF: a hidden flag (`--kernel-btf`), not a file key,
    /// for simulating kernels that lack BTF or a field.
    pub kernel_btf: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            leak_after: DEFAULT_LEAK_AFTER,
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            reconcile_budget_ppm: DEFAULT_RECONCILE_BUDGET_PPM,
            holders_refresh: DEFAULT_HOLDERS_REFRESH,
            pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
            ring_buffer_size: DEFAULT_RING_BUFFER_SIZE,
            track_after: DEFAULT_TRACK_AFTER,
            young_sockets: DEFAULT_YOUNG_SOCKETS,
            watch: Watch::default(),
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            labels: LabelConfig::default(),
            max_process_series: DEFAULT_MAX_PROCESS_SERIES,
            max_peer_series: DEFAULT_MAX_PEER_SERIES,
            stack_samples: DEFAULT_STACK_SAMPLES,
            max_site_series: DEFAULT_MAX_SITE_SERIES,
            filters: Filters::default(),
            web: WebConfig {
                config_file: None,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
            },
            source: None,
            kernel_btf: PathBuf::from(DEFAULT_KERNEL_BTF),
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
    /// Checks beyond the per-value parsers.
    pub fn validate(&self) -> Result<(), ConfigError> {
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

/// `""` (or `none`) means "do not pin".
pub fn pin_dir_setting(value: &Path) -> Option<PathBuf> {
    let text = value.as_os_str();
    (!text.is_empty() && text != "none").then(|| value.to_path_buf())
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
