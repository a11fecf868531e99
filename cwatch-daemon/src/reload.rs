/*!
SIGHUP: re-read the config file (with the command line's flags still on top)
and the web config file, and apply what can change while running:

| live on SIGHUP | needs a restart |
|---|---|
| leak_after, log_level, labels, process_key, max_process_series, max_peer_series, include, exclude, web.config_file (TLS certificate, key, users), web.request_timeout (new connections) | listen, reconcile_interval, web.max_connections |

A file that does not parse or validate changes nothing: the error is logged
in one line, `cwatch_config_last_reload_successful` drops to 0, and the
running configuration stays.
*/
use std::sync::Arc;

use tracing::{info, warn};

use crate::{Shared, cli::RunArgs, config::Config, http::webconfig, logging};

/// Waits for SIGHUP and reloads, until aborted.
pub async fn run(shared: Arc<Shared>, args: Option<RunArgs>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(err) => {
            warn!("cannot install the SIGHUP handler, reload is off: {err}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let Some(args) = &args else {
            info!("SIGHUP: nothing to reload (started without a command line to re-read)");
            continue;
        };
        let ok = reload(&shared, args);
        shared.metrics.own.reloaded(ok);
    }
}

/// One reload; `true` when the new configuration is in force.
pub fn reload(shared: &Shared, args: &RunArgs) -> bool {
    let new = match Config::from_run_args(args) {
        Ok(c) => c,
        Err(err) => {
            warn!("SIGHUP: reload failed, keeping the running config: {err}");
            return false;
        }
    };
    let web = match webconfig::load(new.web.config_file.as_deref()) {
        Ok(w) => w,
        Err(err) => {
            warn!("SIGHUP: reload failed, keeping the running config: {err}");
            return false;
        }
    };
    let old = shared.config();
    for (what, changed) in [
        ("listen", old.listen != new.listen),
        (
            "reconcile_interval",
            old.reconcile_interval != new.reconcile_interval,
        ),
        (
            "web.max_connections",
            old.web.max_connections != new.web.max_connections,
        ),
    ] {
        if changed {
            warn!("SIGHUP: {what} changed; it takes effect at the next restart");
        }
    }
    if old.log_level != new.log_level {
        logging::set_level(&new.log_level);
    }
    let summary = describe(&new);
    shared.set_web_security(web);
    shared.set_config(new);
    info!("SIGHUP: config reloaded ({summary})");
    true
}

fn describe(c: &Config) -> String {
    format!(
        "leak_after={}, log_level={}, labels=[{}], process_key={}, max_process_series={}, \
         max_peer_series={}, {} include / {} exclude rules",
        humantime::format_duration(c.leak_after),
        c.log_level,
        c.labels
            .enabled()
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(","),
        c.labels.process_key,
        c.max_process_series,
        c.max_peer_series,
        c.filters.include.len(),
        c.filters.exclude.len(),
    )
}
