/*!
What the daemon's tasks really share, and nothing else: the configuration in
force, the clock, the socket table, the stages' telemetry, the loaded probes
(the kernel maps reconciliation and scrapes read), and two facts about
progress (ready; how far the ring has been drained) with the two wake-ups
that replace polling (drain the ring now; `YOUNG` has new sockets).

No lock here is ever held across file, netlink or socket I/O: the table's
lock guards pure data (callers copy out what they need, then do their I/O),
and the probes are handed out as an `Arc` so that map reads need no lock of
this module at all. The table's guard ([`TableGuard`]) times every hold: one
longer than [`LONG_HOLD`] is logged (debug, target `cwatch::lock`) with the
caller's place, since a scrape or the intake waits that long behind it.
*/
use std::{
    ops::{Deref, DerefMut},
    panic::Location,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::{
    clock::Clock, config::Config, probe::Probes, sites::Sites, table::SocketTable,
    telemetry::Telemetry,
};

/// State shared by the tasks and the HTTP handlers.
pub struct State {
    /// Replaced whole on SIGHUP; read it through [`State::config`].
    config: RwLock<Arc<Config>>,
    pub clock: Box<dyn Clock>,
    pub telemetry: Telemetry,
    table: Mutex<SocketTable>,
    /// Where leaked sockets were opened (its own lock; taken after the
    /// table's when both are held).
    pub sites: Sites,
    /// Set once the programs are attached; taken at shutdown to detach them.
    probes: RwLock<Option<Arc<Probes>>>,
    ready: AtomicBool,
    /// CLOCK_BOOTTIME ns when the last completed drain of the ring began:
    /// every event recorded before it has been read (or was lost).
    drained_ns: AtomicU64,
    /// Asks intake to drain the ring now (reconciliation needs everything
    /// from before its dump applied).
    pub drain_requested: Notify,
    /// Tells the young scanner that the kernel put a socket in `YOUNG`.
    pub young_wake: Notify,
}

impl State {
    pub fn new(config: Config, clock: Box<dyn Clock>) -> Self {
        Self {
            config: RwLock::new(Arc::new(config)),
            clock,
            telemetry: Telemetry::new(),
            table: Mutex::new(SocketTable::new()),
            sites: Sites::new(),
            probes: RwLock::new(None),
            ready: AtomicBool::new(false),
            drained_ns: AtomicU64::new(0),
            drain_requested: Notify::new(),
            young_wake: Notify::new(),
        }
    }

    /// The configuration now in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// The table (a panic elsewhere while holding it does not poison it:
    /// the data is a cache the next reconciliation repairs). A task that
    /// updates it in chunks ends each with [`MutexGuard::unlock_fair`], so
    /// that a waiting scrape goes before its next chunk.
    #[track_caller]
    pub fn lock_table(&self) -> TableGuard<'_> {
        let guard = self.table.lock();
        TableGuard {
            guard,
            since: Instant::now(),
            at: Location::caller(),
        }
    }

    /// The loaded probes, `None` before they are attached or once detached.
    pub fn probes(&self) -> Option<Arc<Probes>> {
        self.probes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_probes(&self, probes: Arc<Probes>) {
        *self.probes.write().unwrap_or_else(|e| e.into_inner()) = Some(probes);
    }

    /// Takes the probes out (shutdown): they detach once the last user of
    /// the `Arc` lets go.
    pub fn take_probes(&self) -> Option<Arc<Probes>> {
        self.probes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn drained_ns(&self) -> u64 {
        self.drained_ns.load(Ordering::Acquire)
    }

    /// Intake: a drain that began at `ns` is complete.
    pub fn set_drained(&self, ns: u64) {
        self.drained_ns.fetch_max(ns, Ordering::AcqRel);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// A hold of the table's lock longer than this is logged: a scrape waiting
/// behind it misses its latency target (20 ms p99 at a million sockets).
pub const LONG_HOLD: Duration = Duration::from_millis(10);

/// The table, locked: derefs to it, and on release logs a hold longer than
/// [`LONG_HOLD`] with the place that took it.
pub struct TableGuard<'a> {
    guard: MutexGuard<'a, SocketTable>,
    since: Instant,
    at: &'static Location<'static>,
}

impl TableGuard<'_> {
    /// Releases the lock fairly: a waiting scrape goes before this task's
    /// next chunk.
    pub fn unlock_fair(this: Self) {
        let this = std::mem::ManuallyDrop::new(this);
        this.note_hold();
        // SAFETY: `this` is never used again and its drop never runs
        // (ManuallyDrop); the guard is moved out exactly once, and `since`
        // and `at` are plain data with no destructor.
        let guard = unsafe { std::ptr::read(&this.guard) };
        MutexGuard::unlock_fair(guard);
    }

    fn note_hold(&self) {
        let held = self.since.elapsed();
        if held > LONG_HOLD {
            tracing::debug!(
                target: "cwatch::lock",
                held_ms = held.as_millis() as u64,
                at = %self.at,
                "the socket table's lock was held long"
            );
        }
    }
}

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        self.note_hold();
    }
}

impl Deref for TableGuard<'_> {
    type Target = SocketTable;
    fn deref(&self) -> &SocketTable {
        &self.guard
    }
}

impl DerefMut for TableGuard<'_> {
    fn deref_mut(&mut self) -> &mut SocketTable {
        &mut self.guard
    }
}
