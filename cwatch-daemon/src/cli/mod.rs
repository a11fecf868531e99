/*!
The command line on top of the daemon: the clap types here (`cwatch run |
ls | reap | check-config | doctor`), flags merged into the configuration
([`resolve`]), what each subcommand does and its exit code ([`commands`]),
the client `cwatch ls` ([`ls`], asking the daemon through [`ls_client`],
with [`ls_direct`] reading the kernel itself), the opt-in destroyer of
leaked sockets ([`reap`]) and the preflight ([`doctor`]).

Every `run` setting is a flag here and a key in the TOML file
([`crate::config`]); both go through the same value parsers
([`crate::config::values`]), so a bad value reads the same either way.
*/
pub mod commands;
pub mod doctor;
mod ls;
mod ls_client;
mod ls_direct;
mod ls_render;
mod ls_stacks;
pub mod reap;
pub mod resolve;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::config::{
    DEFAULT_KERNEL_BTF, DEFAULT_PIN_DIR, WatchRule,
    filters::FilterRule,
    labels::{OwnerLabel, ProcessKeyMode},
    values::{
        parse_cpu_share, parse_filter_rule, parse_log_level, parse_max_connections,
        parse_min_100ms, parse_owner_label, parse_positive_duration, parse_process_key,
        parse_reconcile_interval, parse_size, parse_stack_samples, parse_track_after,
        parse_watch_rule, parse_young_sockets,
    },
};

const EXAMPLES: &str = "\
Examples:
  cwatch run                                  # serve http://127.0.0.1:9478/metrics
  cwatch run --leak-after 2m --listen 0.0.0.0:9478
  cwatch run --config /etc/cwatch/cwatch.toml --log-level debug
  cwatch run --web.config.file /etc/cwatch/web.yml   # TLS and basic auth
  cwatch run --label unit --label container --max-process-series 500
  cwatch run --exclude comm:sshd --include peer_cidr:10.0.0.0/8
  cwatch ls --leaked                          # leaked sockets, oldest first
  cwatch ls --peer 10.1.2.3:7000 --json
  cwatch reap --older-than 1h --peer 10.1.2.3  # list what it would destroy
  cwatch reap --older-than 1h --pid 4242 --yes # destroy them (like ss -K)
  cwatch check-config /etc/cwatch/cwatch.toml # validate, print effective config
  cwatch doctor                               # can this host run cwatch?

Signals: SIGTERM/SIGINT stop the daemon; SIGHUP re-reads --config.
Exit codes: 0 ok, 1 runtime failure, 2 bad flag, value or config file.";

#[derive(Debug, Parser)]
#[command(
    name = "cwatch",
    version,
    about = "Finds TCP sockets stuck in CLOSE_WAIT, names the process that leaks them, \
             and exports Prometheus metrics.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and serve /metrics, /healthz and /api/v1/sockets.
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// List the sockets now in CLOSE_WAIT, oldest first, with counts per peer and process.
    #[command(
        after_help = "Examples:\n  cwatch ls\n  cwatch ls --leaked --pid 4242\n  \
                            cwatch ls --peer 10.1.2.3 --json\n  cwatch ls --listen 127.0.0.1:9478"
    )]
    Ls(LsArgs),
    /// Destroy leaked CLOSE_WAIT sockets (sock_diag SOCK_DESTROY, as `ss -K`):
    /// lists them only, unless --yes.
    #[command(after_help = "Examples:\n  cwatch reap --older-than 1h\n  \
                            cwatch reap --older-than 30m --pid 4242 --peer 10.1.2.3:7000 --yes\n\n\
                            Destroying frees the kernel's socket and the peer's resources, not the \
                            process's fd:\nthe socket stays a dead socket held until the program \
                            calls close().\nExit codes: 0 ok, 1 runtime failure, 2 bad flag or a \
                            kernel that cannot destroy sockets.")]
    Reap(ReapArgs),
    /// Validate a config file and print the effective configuration (defaults filled in).
    CheckConfig(CheckConfigArgs),
    /// Check that this host can run cwatch: kernel, BTF, tracefs, bpffs, tracepoints, capabilities.
    Doctor(DoctorArgs),
}

/// `cwatch run`. Every `Option`/empty `Vec` means "not given": the file's
/// value (or the default) stays.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// TOML config file; flags override its values. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for the HTTP endpoints [default: 127.0.0.1:9478].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// A socket is leaked once it has been in CLOSE_WAIT this long [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub leak_after: Option<Duration>,
    /// How often the daemon re-reads the kernel's own records [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_reconcile_interval)]
    pub reconcile_interval: Option<Duration>,
    /// Share of one core the full reconciliation passes run as a safety net
    /// may use: they are spaced by what the last one cost (at least ten
    /// intervals apart) [default: 0.5%].
    #[arg(long, value_name = "PERCENT", value_parser = parse_cpu_share)]
    pub reconcile_budget: Option<u32>,
    /// How often the fds holding tracked sockets are re-checked [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_min_100ms)]
    pub holders_refresh: Option<Duration>,
    /// bpffs directory for the maps that survive restarts; "none" (or "") to not pin
    /// [default: /sys/fs/bpf/cwatch].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Size of the kernel→daemon event ring: bytes, a power of two, at least
    /// 4096; suffixes KiB and MiB [default: 4MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub ring_buffer_size: Option<u32>,
    /// A socket is tracked (gauges, API, ls) once it has been in CLOSE_WAIT
    /// this long; shorter ones are counted (transitions, closes, durations)
    /// but not tracked [default: 200ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_track_after)]
    pub track_after: Option<Duration>,
    /// Most sockets in CLOSE_WAIT for less than track-after at once (the
    /// kernel's NURSERY slots and preallocated YOUNG map); beyond,
    /// reconciliation finds them
    /// [default: 16384].
    #[arg(long, value_name = "N", value_parser = parse_young_sockets)]
    pub young_sockets: Option<u32>,
    /// Whose connect() the kernel records (owner at once): leakers (processes
    /// once they leaked), comm:NAME, all (every process: debugging), none.
    /// Repeat or comma-separate [default: leakers].
    #[arg(long, value_name = "RULE", value_delimiter = ',', value_parser = parse_watch_rule)]
    pub watch: Vec<WatchRule>,
    /// Log filter: error, warn, info, debug, trace, or tracing directives
    /// such as `info,cwatch_daemon=debug` [default: info]. RUST_LOG wins when set.
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_level)]
    pub log_level: Option<String>,
    /// Extra label on the per-process metrics: unit (systemd unit), container
    /// (container id), exe (executable path). Repeat or comma-separate.
    #[arg(long = "label", value_name = "LABEL", value_delimiter = ',', value_parser = parse_owner_label)]
    pub labels: Vec<OwnerLabel>,
    /// What one per-process series stands for: pid (default), comm (all
    /// processes of that name; pid="*"), unit (all processes of a systemd unit).
    #[arg(long, value_name = "pid|comm|unit", value_parser = parse_process_key)]
    pub process_key: Option<ProcessKeyMode>,
    /// Most per-process series per metric family; the smallest groups beyond
    /// fold into comm="[other]" [default: 500; 0 = no limit].
    #[arg(long, value_name = "N")]
    pub max_process_series: Option<usize>,
    /// Most per-peer series per metric family; the smallest groups beyond fold
    /// into peer_addr="[other]" [default: 1000; 0 = no limit].
    #[arg(long, value_name = "N")]
    pub max_peer_series: Option<usize>,
    /// Connect-time stacks of watched processes the kernel holds at once
    /// (~16 KiB each, only while held), unwound when their socket leaks to
    /// name the code that opened it; 0 = no stack capture [default: 1024].
    #[arg(long, value_name = "N", value_parser = parse_stack_samples)]
    pub stack_samples: Option<u32>,
    /// Most sites of cwatch_leak_site_sockets; the rest fold into
    /// site="[other]" [default: 10; 0 = no limit].
    #[arg(long, value_name = "N")]
    pub max_site_series: Option<usize>,
    /// Only count sockets matching one of these rules (KIND:VALUE, KIND one of
    /// port, local_port, peer_port, cidr, local_cidr, peer_cidr, comm, unit;
    /// ports may be ranges like 8000-8100). Repeatable.
    #[arg(long, value_name = "KIND:VALUE", value_parser = parse_filter_rule)]
    pub include: Vec<FilterRule>,
    /// Never count sockets matching any of these rules (same forms as --include).
    #[arg(long, value_name = "KIND:VALUE", value_parser = parse_filter_rule)]
    pub exclude: Vec<FilterRule>,
    /// Web config file in the Prometheus exporter-toolkit format (TLS, basic auth).
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Longest time a client may take to send a request or read an answer [default: 10s].
    #[arg(long = "web.request-timeout", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub web_request_timeout: Option<Duration>,
    /// Most HTTP connections served at once; more wait to be accepted [default: 64].
    #[arg(long = "web.max-connections", value_name = "N", value_parser = parse_max_connections)]
    pub web_max_connections: Option<usize>,
    /// The kernel's BTF file (hidden: for simulating a kernel without BTF
    /// or without a field cwatch reads).
    #[arg(long = "kernel-btf", value_name = "FILE", hide = true)]
    pub kernel_btf: Option<PathBuf>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct LsArgs {
    /// Only sockets older than leak-after.
    #[arg(long)]
    pub leaked: bool,
    /// Every socket, not only the oldest --limit (streamed).
    #[arg(long)]
    pub all: bool,
    /// How many of the oldest sockets to list [default: 100].
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = parse_limit)]
    pub limit: usize,
    /// Print JSON (the daemon's API objects) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show where each socket was opened (the first frames of its connect()
    /// stack outside libc and runtimes) and the sockets by site.
    #[arg(long)]
    pub stacks: bool,
    /// Only sockets held by this pid.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only sockets to this peer: ADDR or ADDR:PORT ([v6]:PORT for IPv6).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_peer)]
    pub peer: Option<String>,
    /// Config file of the daemon to ask (for its listen address).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the daemon to ask [default: from the config, else 127.0.0.1:9478].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
}

/// `cwatch reap`.
#[derive(Debug, Args, Default, Clone)]
pub struct ReapArgs {
    /// Only leaked sockets in CLOSE_WAIT at least this long (e.g. 30m, 2h); required.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub older_than: Option<Duration>,
    /// Only sockets held by this pid.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only sockets to this peer: ADDR or ADDR:PORT ([v6]:PORT for IPv6).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_peer)]
    pub peer: Option<String>,
    /// Destroy them; without it nothing is destroyed, only listed.
    #[arg(long)]
    pub yes: bool,
    /// Config file of the daemon to ask (for its listen address).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the daemon to ask [default: from the config, else 127.0.0.1:9478].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Args, Clone)]
pub struct CheckConfigArgs {
    /// The TOML config file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args, Default, Clone)]
pub struct DoctorArgs {
    /// The directory cwatch pins its maps under.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The kernel's BTF file (hidden, as for `run`).
    #[arg(long = "kernel-btf", value_name = "FILE", hide = true, default_value = DEFAULT_KERNEL_BTF)]
    pub kernel_btf: PathBuf,
}

/// `--limit`: 1 to the API's most per page.
pub fn parse_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=crate::http::query::MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("expected 1 to {}", crate::http::query::MAX_LIMIT)),
    }
}

/// `--peer`: an address, or an address and port; returned normalised as the
/// API's `peer` filter takes it.
pub fn parse_peer(text: &str) -> Result<String, String> {
    crate::http::wire::PeerFilter::parse(text).map(|_| text.to_string())
}
