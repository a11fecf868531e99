/*!
The command line into the configuration: `cwatch run`'s flags over the
config file (over the defaults), validated; and what `cwatch ls` and
`cwatch reap` take from a config file (the daemon's address, leak-after).
*/
use std::{net::SocketAddr, time::Duration};

use super::{LsArgs, ReapArgs, RunArgs};
use crate::config::{Config, ConfigError, load_file, pin_dir_setting};

/// Merges the config file (if any) under the flags and validates.
pub fn run_config(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => load_file(path)?,
        None => Config::default(),
    };
    apply_flags(&mut config, args);
    config.validate()?;
    Ok(config)
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
    if let Some(v) = args.reconcile_budget {
        config.reconcile_budget_ppm = v;
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
    if let Some(v) = args.track_after {
        config.track_after = v;
    }
    if let Some(v) = args.young_sockets {
        config.young_sockets = v;
    }
    if !args.watch.is_empty() {
        config.watch = crate::config::Watch::from_rules(&args.watch);
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
    if let Some(v) = args.stack_samples {
        config.stack_samples = v;
    }
    if let Some(v) = args.max_site_series {
        config.max_site_series = v;
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
    if let Some(v) = &args.kernel_btf {
        config.kernel_btf = v.clone();
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

/// The daemon `cwatch reap` asks (`--listen`, else the config file's) and
/// its `--older-than`, which it cannot do without.
pub fn reap_target(args: &ReapArgs) -> Result<(SocketAddr, Duration), String> {
    let Some(older_than) = args.older_than else {
        return Err(
            "`cwatch reap` needs --older-than DURATION (e.g. --older-than 1h): \
                    how long a leaked socket must have been in CLOSE_WAIT to be destroyed"
                .to_string(),
        );
    };
    let settings = LsArgs {
        config: args.config.clone(),
        listen: args.listen,
        ..Default::default()
    };
    let (target, _) = ls_settings(&settings).map_err(|e| e.to_string())?;
    Ok((target, older_than))
}
