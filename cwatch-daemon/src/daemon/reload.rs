/*!
SIGHUP: re-read the config file (with the command line's flags still on top)
and the web config file, and apply what can change while running:

| live on SIGHUP | needs a restart |
|---|---|
| leak_after, reconcile_budget, log_level, labels, process_key, max_process_series, max_peer_series, include, exclude, web.config_file (TLS certificate, key, users), web.request_timeout (new connections) | listen, reconcile_interval, web.max_connections |

A file that does not parse or validate changes nothing: the error is logged
in one line, `cwatch_config_last_reload_successful` drops to 0, and the
running configuration stays.
*/
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::logging;
use crate::{
    config::{Config, ConfigError},
    http::{Web, webconfig},
    state::State,
};

/// Reads the configuration again (the file under the command line's flags).
pub type Reloader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The SIGHUP task: what it changes (the state's config, the web security)
/// and how it re-reads (`reloader`; `None`: nothing to re-read).
pub struct Task {
    pub state: Arc<State>,
    pub web: Arc<Web>,
    pub reloader: Option<Reloader>,
}

impl Task {
    /// Waits for SIGHUP and reloads, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(err) => {
                warn!("cannot install the SIGHUP handler, reload is off: {err}");
                return cancel.cancelled().await;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return cancel.cancelled().await },
                () = cancel.cancelled() => return,
            }
            let Some(reloader) = &self.reloader else {
                info!("SIGHUP: nothing to reload (started without a command line to re-read)");
                continue;
            };
            let ok = reload(&self.state, &self.web, reloader);
            self.state.telemetry.reloaded(ok);
        }
    }
}

/// One reload; `true` when the new configuration is in force.
pub fn reload(state: &State, web: &Web, reloader: &Reloader) -> bool {
    let new = match reloader() {
        Ok(c) => c,
        Err(err) => {
            warn!("SIGHUP: reload failed, keeping the running config: {err}");
            return false;
        }
    };
    let security = match webconfig::load(new.web.config_file.as_deref()) {
        Ok(w) => w,
        Err(err) => {
            warn!("SIGHUP: reload failed, keeping the running config: {err}");
            return false;
        }
    };
    let old = state.config();
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
    web.set_security(security);
    state.set_config(new);
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
