/*!
Reconciliation: brings the socket table (and the kernel's pinned
`CLOSE_WAIT` map) back in line with the kernel's own socket table, read
through sock_diag in every network namespace, so a lost event, a missed
transition or a record deleted from a map never leaves a gauge wrong for
longer than one `--reconcile-interval`. Each difference fixed is counted in
`cwatch_reconcile_corrections_total`.

The first pass, at start-up before `/healthz` turns ready, is how cwatch
learns the sockets that were in CLOSE_WAIT before it ran: those the pinned
map remembers keep their true start; the others get an estimated one
(tcp_info's last ACK received, else now) and `age_estimated`. Differences
found by the first pass are discovery, not drift, and are not counted.
*/
mod kernel_map;
pub mod limits;
pub mod schedule;
mod table_fix;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use cwatch_common::{Event, SockRecord, control, counter};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use kernel_map::MapFixes;
use limits::Limits;
use schedule::{Full, Schedule, safety_net};

use crate::{
    clock::thread_cpu,
    kernel_view::{KernelView, kernel_view},
    owners::{self, ProcRoot, Work},
    probe::Probes,
    state::{State, TableGuard},
    table::{DeadEntry, SockEntry, SocketTable},
};

/// What one pass changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Corrections {
    /// In CLOSE_WAIT in the kernel, missing from the table.
    pub added: u64,
    /// In the table, no longer in CLOSE_WAIT in the kernel.
    pub removed: u64,
    /// Missing from the kernel's CLOSE_WAIT map (re-inserted).
    pub map_added: u64,
    /// In the kernel's CLOSE_WAIT map, no longer in CLOSE_WAIT (deleted).
    pub map_removed: u64,
}

impl Corrections {
    /// The counts in the order of `telemetry::CORRECTION_KINDS`.
    pub fn counts(&self) -> [u64; 4] {
        [self.added, self.removed, self.map_added, self.map_removed]
    }
}

/// A socket that left CLOSE_WAIT, is held by no fd and is no longer in
/// LAST_ACK is forgotten from `LINGER` after this long (its destroy went
/// unseen, e.g. while no daemon ran).
const LINGER_LIMIT: Duration = Duration::from_secs(30);

/// What one pass leaves to the next: sockets it found in CLOSE_WAIT that
/// neither the table nor the kernel map knew (see [`sync`]), and what the
/// [`Schedule`] of full passes remembers.
#[derive(Debug)]
pub struct Suspects {
    first_pass: bool,
    cookies: HashSet<u64>,
    schedule: Schedule,
    limits: Limits,
}

impl Default for Suspects {
    fn default() -> Self {
        Self {
            first_pass: true,
            cookies: HashSet::new(),
            schedule: Schedule::default(),
            limits: Limits::default(),
        }
    }
}

/// The kernel's counts of lost events and of records it could not store;
/// `None` when unreadable (then every pass is full). What moved since the
/// last pass is logged, in one line (see [`limits`]).
fn drift_evidence(probes: &Probes, limits: &mut Limits, state: &State) -> Option<u64> {
    match probes.counter_totals() {
        Ok(k) => {
            let config = state.config();
            limits.log(&k, config.ring_buffer_size, config.young_sockets);
            Some(
                k[counter::EVENTS_LOST as usize]
                    + k[counter::RECORDS_FULL as usize]
                    + k[counter::LINGER_FULL as usize],
            )
        }
        Err(err) => {
            warn!("reading kernel counters: {err}");
            None
        }
    }
}

/// Whether a socket with an fd to find has no holder yet, or a dead socket
/// is not verified yet.
fn needs_walk(table: &SocketTable) -> bool {
    table.iter().any(|e| e.inode != 0 && e.holders.is_empty())
        || table.unverified().next().is_some()
}

/// The reconciliation task: what it owns (the pass-to-pass suspects) and
/// what it works with (the shared state, the probes' maps, the attribution
/// worker's handle, the proc root).
pub struct Reconciler {
    pub state: Arc<State>,
    pub probes: Arc<Probes>,
    pub owners: owners::Handle,
    pub proc: ProcRoot,
    pub suspects: Suspects,
    /// The start-up pass's map fixes, left for after ready.
    pub deferred: Option<MapFixes>,
}

impl Reconciler {
    /// Waits (at most a second) for a drain of the ring that began after
    /// `after_ns`.
    fn wait_for_drain(&self, after_ns: u64) {
        self.state.drain_requested.notify_one();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while self.state.drained_ns() <= after_ns && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One pass: sock_diag in every namespace, then the table, the kernel's
    /// map and `LINGER` are brought in line. The first pass is the start-up
    /// one.
    pub fn pass(&mut self) -> anyhow::Result<Corrections> {
        let state = &*self.state;
        let suspects = &mut self.suspects;
        let initial = suspects.first_pass;
        let evidence = drift_evidence(&self.probes, &mut suspects.limits, state);
        let config = state.config();
        let cost = state.telemetry.last_full_pass_cpu();
        let spacing = safety_net(config.reconcile_interval, cost, config.reconcile_budget_ppm);
        state.telemetry.set_safety_net(spacing);
        let full = suspects.schedule.decide(
            evidence,
            !suspects.cookies.is_empty(),
            spacing,
            std::time::Instant::now(),
        );
        if full.is_none() && !initial {
            debug!("reconciliation: no event lost since the last full pass; skipped");
            state.telemetry.reconcile_pass(false);
            return Ok(Corrections::default());
        }
        // Said before the dump: a reader of the log knows a pass is running.
        debug!(why = ?full, "reconciliation: full pass started");
        let periodic = full == Some(Full::Periodic);
        let cpu = thread_cpu();
        let dump_start_ns = state.clock.now_ns();
        // Unknown sockets are added with an estimated start on the first
        // pass, or when a suspect is seen again: only then is tcp_info worth
        // its bytes.
        let started = std::time::Instant::now();
        let view = kernel_view(&self.proc, initial || !suspects.cookies.is_empty());
        view.failures
            .iter()
            .for_each(|f| state.telemetry.source_failed(*f));
        self.wait_for_drain(state.clock.now_ns());
        // Young first: the young scanner moves a record into the map under
        // the map's lock, so a socket it reports during these two reads is
        // in one of them (map first, it could be in neither).
        let young = self.probes.young_snapshot()?;
        let map = self.probes.close_wait_snapshot()?;
        limits::wake_young_if_overdue(state, &young);
        let linger = if initial {
            Some(self.probes.linger_snapshot()?)
        } else {
            None
        };
        let now_ns = state.clock.now_ns();
        let mut map = map;
        if initial {
            state.lock_table().reserve(view.close_wait.len());
        }
        let probes = &self.probes;
        let mut c = table_fix::sync(
            table_fix::Found {
                view: &view,
                map: &mut map,
                young: &young,
                now_ns,
                dump_start_ns,
            },
            &mut self.suspects,
            &mut |f| {
                let mut table = state.lock_table();
                f(&mut table);
                TableGuard::unlock_fair(table);
            },
            &mut |cookies| probes.gone_from_close_wait(cookies),
        );
        if let Some(linger) = &linger {
            restore_dead(&mut state.lock_table(), linger);
        }
        // Asked for before the map is written back: the walk and the
        // write-back overlap (start-up's walk of a million sockets' fds
        // takes seconds).
        let walk = initial || periodic || needs_walk(&state.lock_table());
        if walk {
            self.owners.request(Work::Walk {
                asked_ns: state.clock.now_ns(),
            });
        }
        let fixes = Self::map_differences(&view, &map, &young, dump_start_ns);
        if initial {
            // A million records take seconds to write: after ready (until
            // then a leave finds no record, and the daemon's own is used).
            self.deferred = Some(fixes);
        } else {
            (c.map_added, c.map_removed) = self.fix_map(&fixes)?;
        }
        self.prune_linger(&view, now_ns)?;
        self.prune_young(&view, &young, dump_start_ns);
        state.telemetry.pass_cpu(thread_cpu().saturating_sub(cpu));
        // Counted once done, so a reader of the counter knows the pass is over.
        state.telemetry.reconcile_pass(true);
        if initial {
            info!(
                sockets = view.close_wait.len(),
                namespaces = view.covered.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "start-up reconciliation: found the sockets already in CLOSE_WAIT"
            );
            return Ok(Corrections::default());
        }
        state.telemetry.corrections(c.counts());
        if c != Corrections::default() {
            info!(
                added = c.added,
                removed = c.removed,
                map_added = c.map_added,
                map_removed = c.map_removed,
                "reconciliation corrected drift"
            );
        }
        Ok(c)
    }

    /// Forgets `LINGER` records of sockets that are neither held (a verified
    /// dead entry) nor in LAST_ACK, once they are old enough.
    fn prune_linger(&self, view: &KernelView, now_ns: u64) -> anyhow::Result<()> {
        let linger = self.probes.linger_snapshot()?;
        let limit = LINGER_LIMIT.as_nanos() as u64;
        let held: HashSet<u64> = self
            .state
            .lock_table()
            .dead()
            .map(|d| d.sock.cookie)
            .collect();
        let forget: Vec<u64> = linger
            .iter()
            .filter(|(cookie, ev)| {
                !held.contains(cookie)
                    && !view.last_ack.contains(cookie)
                    && now_ns.saturating_sub(ev.ts_ns) > limit
            })
            .map(|(cookie, _)| *cookie)
            .collect();
        self.probes.forget_linger(&forget);
        if forget.len() == linger.len() && held.is_empty() {
            // Nothing lingers: `tcp_destroy_sock` can stop looking until the
            // next socket that leaves without its file released says so.
            self.probes.set_control(control::LINGERING, 0)?;
            if !self.probes.linger_snapshot()?.is_empty() {
                self.probes.set_control(control::LINGERING, 1)?;
            }
        }
        Ok(())
    }

    /// Forgets `YOUNG` records of sockets no longer in CLOSE_WAIT: they left
    /// while no program was attached (the daemon was stopped), so the
    /// kernel never deleted them.
    fn prune_young(&self, view: &KernelView, young: &HashMap<u64, SockRecord>, dump_start_ns: u64) {
        let stale = view.gone_from(young, dump_start_ns);
        if !stale.is_empty() {
            debug!(
                stale = stale.len(),
                "forgetting YOUNG records of sockets gone"
            );
            self.probes.forget_young(&stale);
        }
    }

    /// Finishes the start-up pass (its write-back), then reconciles every
    /// `reconcile_interval` until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.state.config().reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first pass already ran at start-up
        if self.deferred.is_some() {
            match tokio::task::spawn_blocking(move || {
                let result = self.finish_start_up();
                (self, result)
            })
            .await
            {
                Ok((task, result)) => {
                    if let Err(err) = result {
                        // The next full pass writes what is missing.
                        warn!("start-up reconciliation: writing the kernel map failed: {err:#}");
                        task.state
                            .telemetry
                            .source_failed(crate::telemetry::Source::Reconcile);
                    }
                    self = task;
                }
                Err(err) => {
                    warn!("reconciliation task failed: {err}");
                    return;
                }
            }
        }
        let mut this = Some(self);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let Some(mut task) = this.take() else { return };
            let done = tokio::task::spawn_blocking(move || {
                let result = task.pass();
                (task, result)
            })
            .await;
            match done {
                Ok((task, result)) => {
                    task.state.telemetry.reconciled(result.is_ok());
                    if let Err(err) = result {
                        warn!("reconciliation failed: {err:#}");
                    }
                    this = Some(task);
                }
                Err(err) => {
                    warn!("reconciliation task failed: {err}");
                    return;
                }
            }
        }
    }
}

/// Dead sockets a previous daemon saw leave CLOSE_WAIT (pinned `LINGER`):
/// the attribution worker checks whether an fd still holds them.
fn restore_dead(table: &mut SocketTable, linger: &HashMap<u64, Event>) {
    for event in linger.values() {
        if table.get(event.rec.cookie).is_none() {
            table.insert_dead(DeadEntry::left(
                SockEntry::from_record(&event.rec),
                event.ts_ns,
                event.newstate,
            ));
        }
    }
}

#[cfg(test)]
mod tests;
