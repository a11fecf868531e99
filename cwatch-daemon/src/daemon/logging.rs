/*!
Logging through `tracing` to stderr. Under systemd (`JOURNAL_STREAM` set)
lines carry no timestamp and no colour: journald adds its own time, and the
level stays in each line. The filter comes from `RUST_LOG` when set, else from
`log_level`; a SIGHUP reload can change the latter while running.
*/
use std::sync::OnceLock;

use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt as _, reload};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether stderr goes to the journal.
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Sets up the global subscriber once; later calls do nothing.
pub fn init(level: &str) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| crate::config::values::normalize_directives(&v));
    let filter = from_env
        .as_deref()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = under_journald();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(!journald);
    let subscriber = tracing_subscriber::registry().with(filter);
    let installed = if journald {
        tracing::subscriber::set_global_default(subscriber.with(fmt.without_time()))
    } else {
        tracing::subscriber::set_global_default(subscriber.with(fmt))
    };
    if installed.is_ok() && from_env.is_none() {
        let _ = HANDLE.set(handle);
    }
}

/// Applies a new `log_level` (ignored when `RUST_LOG` decides).
pub fn set_level(level: &str) {
    let Some(handle) = HANDLE.get() else {
        tracing::info!("log level stays as RUST_LOG sets it");
        return;
    };
    match EnvFilter::try_new(level) {
        Ok(filter) => {
            if handle.reload(filter).is_ok() {
                tracing::info!(level, "log level changed");
            }
        }
        Err(err) => tracing::warn!("log level {level:?}: {err}"),
    }
}
