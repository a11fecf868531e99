/*!
The kernel's own log lines: what the programs say on their rare paths (a
map full, a failed read, an unexpected state, a record they could not
store) through aya-log's `AYA_LOGS` ring, forwarded into the daemon's
tracing log under this module's target.

- **Level-filtered at load**: [`kernel_level`] turns the tracing filter's
  most verbose level into the programs' `AYA_LOG_LEVEL`. It sits in frozen
  `.rodata`, so the verifier sees a constant and drops every log statement
  above it from the program: a level that is off costs the kernel nothing.
- **Rate-limited here**: a burst in the kernel (a thousand sockets finding
  `YOUNG` full) is a thousand records, bounded by the ring (the rest are
  dropped in the kernel); of those, each call site gets [`BURST`] lines per
  [`WINDOW`], and the first line after a window says how many were held
  back. Counted in `cwatch_kernel_log_records_total{outcome}`.
- **Guarded**: aya-log's reader unwraps a record it cannot parse (a panic);
  a malformed record is caught, counted as `outcome="malformed"`, kept out
  of the log, and the reader goes on with the next one.

The counters (`cwatch_kernel_errors_total`, `cwatch_events_lost_total`) stay
the source of truth for alerts; these lines tell the story beside them.
*/
use std::{
    cell::Cell,
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Mutex, Once},
    time::{Duration, Instant},
};

use aya_log::EbpfLogger;
use cwatch_common::names;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{Level, debug, error, info, level_filters::LevelFilter, trace, warn};

use crate::{probe::Probes, telemetry};

/// Lines each kernel call site may log per window.
pub const BURST: u32 = 5;
/// The rate limiter's window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// `AYA_LOG_LEVEL` for the programs: aya-log's levels (error 1 … trace 5;
/// 0 is off) from the most verbose level the tracing filter lets through.
pub fn kernel_level(filter: LevelFilter) -> u8 {
    match filter.into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

/// What the limiter decides for one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `held_back` lines of this site were dropped before it.
    Log {
        held_back: u64,
    },
    Drop,
}

/// Per call site: [`BURST`] lines per [`WINDOW`].
#[derive(Debug, Default)]
pub struct Limiter {
    sites: HashMap<(String, u32), Site>,
}

#[derive(Debug)]
struct Site {
    since: Instant,
    logged: u32,
    held_back: u64,
}

impl Limiter {
    pub fn check(&mut self, file: &str, line: u32, now: Instant) -> Verdict {
        let site = self.sites.entry((file.to_string(), line)).or_insert(Site {
            since: now,
            logged: 0,
            held_back: 0,
        });
        if now.duration_since(site.since) >= WINDOW {
            site.since = now;
            site.logged = 0;
        }
        if site.logged < BURST {
            site.logged += 1;
            Verdict::Log {
                held_back: std::mem::take(&mut site.held_back),
            }
        } else {
            site.held_back += 1;
            Verdict::Drop
        }
    }
}

/// The `log::Log` aya-log writes to: rate limit, then tracing.
pub struct Forward {
    limiter: Mutex<Limiter>,
    outcomes: IntCounterVec,
}

impl Forward {
    pub fn new(outcomes: IntCounterVec) -> Self {
        Self {
            limiter: Mutex::new(Limiter::default()),
            outcomes,
        }
    }

    fn count(&self, outcome: &str) {
        self.outcomes.with_label_values(&[outcome]).inc();
    }
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let (file, line) = (record.file().unwrap_or("?"), record.line().unwrap_or(0));
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(file, line, Instant::now());
        let Verdict::Log { held_back } = verdict else {
            self.count("rate_limited");
            return;
        };
        self.count("logged");
        let text = record.args().to_string();
        let site = format!("{file}:{line}");
        match record.level() {
            log::Level::Error => error!(site, held_back, "kernel: {text}"),
            log::Level::Warn => warn!(site, held_back, "kernel: {text}"),
            log::Level::Info => info!(site, held_back, "kernel: {text}"),
            log::Level::Debug => debug!(site, held_back, "kernel: {text}"),
            log::Level::Trace => trace!(site, held_back, "kernel: {text}"),
        }
    }

    fn flush(&self) {}
}

thread_local! {
    /// Set while this thread reads kernel log records: a panic then is a
    /// malformed record, caught and counted, not a crash to report.
    static READING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps the panic hook quiet for the reader's caught panics only.
fn quiet_reader_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !READING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `read` (aya-log's reader) until it returns, catching the panic of
/// each record it cannot parse: how many it caught. The record that failed
/// is consumed, so the next call goes on after it.
pub fn guarded(mut read: impl FnMut()) -> u64 {
    quiet_reader_panics();
    let mut malformed = 0;
    loop {
        READING.with(|r| r.set(true));
        let result = catch_unwind(AssertUnwindSafe(&mut read));
        READING.with(|r| r.set(false));
        match result {
            Ok(()) => return malformed,
            // Each caught panic consumed one record; a ring that keeps
            // failing cannot hold the task forever.
            Err(_) if malformed < 4096 => malformed += 1,
            Err(_) => return malformed,
        }
    }
}

/// The reader task: forwards the programs' log records until `cancel`.
pub struct KernelLog {
    pub logger: EbpfLogger<Forward>,
    pub outcomes: IntCounterVec,
}

/// The reader for the loaded programs' log ring, its counter registered in
/// `registry`; `None` (said in one line) when aya-log cannot find the ring:
/// the daemon runs on without the kernel's lines, its counters unchanged.
pub fn start(probes: &Probes, registry: &Registry) -> Option<KernelLog> {
    let outcomes = telemetry::register(
        registry,
        IntCounterVec::new(
            Opts::new(
                "cwatch_kernel_log_records_total",
                "Log records of the kernel programs (aya-log), by outcome: logged, rate_limited (held back by the per-site limit), malformed (could not be parsed, dropped).",
            ),
            &["outcome"],
        )
        .ok()?,
    );
    for outcome in ["logged", "rate_limited", "malformed"] {
        outcomes.with_label_values(&[outcome]).inc_by(0);
    }
    let id = probes.program_id(names::PROG_SET_STATE)?;
    match EbpfLogger::init_from_id_with_logger(id, Forward::new(outcomes.clone())) {
        Ok(logger) => Some(KernelLog { logger, outcomes }),
        Err(err) => {
            warn!(
                "the kernel programs' log ring (aya-log) is not readable: {err}; running without their lines"
            );
            None
        }
    }
}

impl KernelLog {
    pub async fn run(self, cancel: CancellationToken) {
        let outcomes = self.outcomes;
        // SAFETY: the logger owns its ring's fd for as long as the AsyncFd
        // owns the logger.
        let registered =
            unsafe { AsyncFd::register_with_interest(self.logger, tokio::io::Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(err) => {
                warn!(
                    "registering the kernel log ring with tokio: {err}; running without the kernel's lines"
                );
                return;
            }
        };
        loop {
            let mut guard = tokio::select! {
                guard = fd.readable_mut() => match guard {
                    Ok(guard) => guard,
                    Err(err) => {
                        warn!("waiting on the kernel log ring: {err}; running without the kernel's lines");
                        return;
                    }
                },
                () = cancel.cancelled() => return,
            };
            let malformed = guarded(|| guard.get_inner_mut().flush());
            guard.clear_ready();
            if malformed > 0 {
                outcomes.with_label_values(&["malformed"]).inc_by(malformed);
                warn!(
                    malformed,
                    "kernel log records that could not be parsed (dropped)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_site_gets_a_burst_per_window_then_says_what_it_held_back() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.check("a.rs", 1, t0), Verdict::Log { held_back: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(l.check("a.rs", 1, t0), Verdict::Drop);
        }
        assert_eq!(
            l.check("a.rs", 2, t0),
            Verdict::Log { held_back: 0 },
            "another site has its own budget"
        );
        assert_eq!(l.check("a.rs", 1, t0 + WINDOW / 2), Verdict::Drop);
        assert_eq!(
            l.check("a.rs", 1, t0 + WINDOW),
            Verdict::Log { held_back: 1001 }
        );
    }

    #[test]
    fn levels_map_to_aya_log_s_and_off_is_zero() {
        assert_eq!(kernel_level(LevelFilter::OFF), 0);
        assert_eq!(kernel_level(LevelFilter::ERROR), 1);
        assert_eq!(kernel_level(LevelFilter::WARN), 2);
        assert_eq!(kernel_level(LevelFilter::INFO), 3);
        assert_eq!(kernel_level(LevelFilter::TRACE), 5);
    }

    #[test]
    fn a_reader_that_panics_on_a_record_is_caught_counted_and_goes_on() {
        let mut records = vec![Ok(()), Err("bad"), Ok(()), Err("bad"), Ok(())];
        let mut read_ok = 0;
        let malformed = guarded(|| {
            while let Some(r) = records.pop() {
                match r {
                    Ok(()) => read_ok += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        assert_eq!((malformed, read_ok), (2, 3));
        // A panic elsewhere still reaches the previous hook.
        assert!(!READING.with(Cell::get));
    }
}
