/*!
The command line (as DESIGN.md names it) and the optional TOML config file,
validated into one [`Config`] that is passed down. Flags override the file.

Errors here are the user's to fix: each is one line naming the problem and the
offending value or file, and `main` exits with code 2 for them.
*/
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";
pub const DEFAULT_LEAK_AFTER: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_HOLDERS_REFRESH: Duration = Duration::from_secs(5);
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/cwatch";
pub const DEFAULT_RING_BUFFER_SIZE: u32 = 8 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "cwatch",
    version,
    about = "Finds TCP sockets stuck in CLOSE_WAIT, names the process that leaks them, \
             and exports Prometheus metrics.",
    after_help = "Examples:\n  \
        cwatch run                          # serve http://127.0.0.1:9478/metrics\n  \
        cwatch run --leak-after 2m --listen 0.0.0.0:9478\n  \
        cwatch ls --leaked                  # leaked sockets, oldest first"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and serve /metrics, /healthz and /api/v1/sockets.
    Run(RunArgs),
    /// List the sockets now in CLOSE_WAIT, oldest first (asks the running daemon).
    Ls(LsArgs),
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// TOML config file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for the HTTP endpoints [default: 127.0.0.1:9478].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// A socket is leaked once it has been in CLOSE_WAIT this long [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub leak_after: Option<Duration>,
    /// How often the daemon re-reads the kernel's own records [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub reconcile_interval: Option<Duration>,
    /// How often the fds holding tracked sockets are re-checked [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub holders_refresh: Option<Duration>,
    /// bpffs directory for the maps that survive restarts; "none" to not pin
    /// [default: /sys/fs/bpf/cwatch].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Size of the kernel→daemon event ring: bytes, a power of two, at least
    /// 4096; suffixes KiB and MiB [default: 8MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub ring_buffer_size: Option<u32>,
}

#[derive(Debug, Args, Default)]
pub struct LsArgs {
    /// Only sockets older than leak-after.
    #[arg(long)]
    pub leaked: bool,
    /// Print the daemon's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Config file of the daemon to ask (for its listen address).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the daemon to ask [default: from the config, else 127.0.0.1:9478].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
}

/// Everything `cwatch run` needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub leak_after: Duration,
    pub reconcile_interval: Duration,
    pub holders_refresh: Duration,
    /// `None`: maps are not pinned.
    pub pin_dir: Option<PathBuf>,
    pub ring_buffer_size: u32,
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
        }
    }
}

/// The config file's keys. Unknown keys are an error, not a silent default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    leak_after: Option<String>,
    reconcile_interval: Option<String>,
    holders_refresh: Option<String>,
    pin_dir: Option<String>,
    ring_buffer_size: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("config file {path}: {key} = {value:?}: {reason}")]
    Value {
        path: String,
        key: &'static str,
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

/// clap value parser for human durations ("500ms", "2s", "5m").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (use a duration such as 500ms, 30s, 5m, 1h)"))
}

/// clap value parser for the ring size: bytes, or with a KiB/MiB suffix; a
/// power of two of at least 4096 (the kernel's rule for ring buffers).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let (digits, unit) = match text.trim() {
        t if t.ends_with("MiB") => (&t[..t.len() - 3], 1u64 << 20),
        t if t.ends_with("KiB") => (&t[..t.len() - 3], 1u64 << 10),
        t => (t, 1u64),
    };
    let bytes = digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| "not a size (use bytes, or a number with KiB or MiB)".to_string())?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err("must be a power of two between 4KiB and 1024MiB".into());
    }
    Ok(bytes as u32)
}

/// `""` (or `none`) means "do not pin".
fn pin_dir_setting(value: &Path) -> Option<PathBuf> {
    let text = value.as_os_str();
    (!text.is_empty() && text != "none").then(|| value.to_path_buf())
}

impl Config {
    /// Merges the config file (if any) under the flags and validates.
    pub fn from_run_args(args: &RunArgs) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => load_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = args.listen {
            config.listen = listen;
        }
        if let Some(d) = args.leak_after {
            config.leak_after = d;
        }
        if let Some(d) = args.reconcile_interval {
            config.reconcile_interval = d;
        }
        if let Some(d) = args.holders_refresh {
            config.holders_refresh = d;
        }
        if let Some(dir) = &args.pin_dir {
            config.pin_dir = pin_dir_setting(dir);
        }
        if let Some(size) = args.ring_buffer_size {
            config.ring_buffer_size = size;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.leak_after.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "--leak-after",
                value: "0s".into(),
                reason: "must be longer than zero".into(),
            });
        }
        if self.reconcile_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                flag: "--reconcile-interval",
                value: humantime::format_duration(self.reconcile_interval).to_string(),
                reason: "must be at least 100ms".into(),
            });
        }
        if self.holders_refresh < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                flag: "--holders-refresh",
                value: humantime::format_duration(self.holders_refresh).to_string(),
                reason: "must be at least 100ms".into(),
            });
        }
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

fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse_file(&shown, &text)
}

fn parse_file(path: &str, text: &str) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::File {
        path: path.to_string(),
        reason: one_line_toml_error(text, &e),
    })?;
    let mut config = Config::default();
    if let Some(listen) = file.listen {
        config.listen = listen.parse().map_err(|e| ConfigError::Value {
            path: path.to_string(),
            key: "listen",
            value: listen.clone(),
            reason: format!("{e} (expected ADDR:PORT)"),
        })?;
    }
    let duration = |key: &'static str, value: String| {
        parse_duration(&value).map_err(|reason| ConfigError::Value {
            path: path.to_string(),
            key,
            value,
            reason,
        })
    };
    if let Some(v) = file.leak_after {
        config.leak_after = duration("leak_after", v)?;
    }
    if let Some(v) = file.reconcile_interval {
        config.reconcile_interval = duration("reconcile_interval", v)?;
    }
    if let Some(v) = file.holders_refresh {
        config.holders_refresh = duration("holders_refresh", v)?;
    }
    if let Some(v) = file.pin_dir {
        config.pin_dir = pin_dir_setting(Path::new(&v));
    }
    if let Some(v) = file.ring_buffer_size {
        config.ring_buffer_size = parse_size(&v).map_err(|reason| ConfigError::Value {
            path: path.to_string(),
            key: "ring_buffer_size",
            value: v.clone(),
            reason,
        })?;
    }
    Ok(config)
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
