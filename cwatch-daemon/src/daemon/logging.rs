/*!
Logging through `tracing` to stderr, every field's control characters
escaped ([`escaped_fields`]). Under systemd (`JOURNAL_STREAM` set)
lines carry no timestamp and no colour: journald adds its own time, and the
level stays in each line. The filter comes from `RUST_LOG` when set, else from
`log_level`; a SIGHUP reload can change the latter while running.
*/
use std::{fmt::Write as _, sync::OnceLock};

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
        .with_target(!journald)
        .fmt_fields(escaped_fields());
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

/// Fields as tracing writes them (`name=value`, the message bare), with
/// every control character escaped: a process, unit or path named with a
/// newline or an escape sequence can neither split a journal line nor
/// drive a terminal.
pub fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() != "message" {
            write!(w, "{}=", field.name())?;
        }
        // Escaped as it is written: no copy of the value.
        write!(Escaping(w), "{value:?}")
    })
    .delimited(" ")
}

/// Writes through `crate::text::for_terminal`; plain ASCII passes as it is.
struct Escaping<'a, 'w>(&'a mut tracing_subscriber::fmt::format::Writer<'w>);

impl std::fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            self.0.write_str(s)
        } else {
            self.0.write_str(&crate::text::for_terminal(s))
        }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn hostile_names_in_log_lines_stay_on_one_line() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(super::escaped_fields());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let comm = "evil\nWARN forged\u{1b}[2J";
            tracing::warn!(comm = %comm, path = ?comm, "leak: process comm={comm} holds");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out:?}");
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("comm=evil\\nWARN forged\\x1b[2J"), "{out:?}");
    }
}
