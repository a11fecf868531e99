/*!
The attribution worker's state and passes: which sockets are past their
grace ([`Worker::pending`]), looking them up among their candidates'
families within the scan budget or, for sockets found nowhere, with a walk
of every process ([`Worker::resolve_pending`], [`Worker::walk`]), and
recording what was found ([`Worker::apply`]). The rules are in the parent
module's doc; the times all come from the state's clock.
*/
use std::{
    collections::{HashMap, HashSet},
    ops::{Add, Sub},
    sync::Arc,
    time::Duration,
};

use crate::state::TableGuard;
use smallvec::SmallVec;
use tracing::debug;

use super::{
    DEAD_GRACE, FAMILY_LIMIT, GRACE, MISS_PATIENCE, SCAN_BUDGET, TICK, cgroups::Cgroups,
    procfs::ProcRoot,
};
use crate::{
    clock::thread_cpu,
    state::State,
    table::{Comm, Holder, SockEntry},
};

/// What scans found: each socket inode's holders, inline when there is one
/// (after a walk a million are dropped at once).
pub(super) type Found = HashMap<u64, SmallVec<[Holder; 1]>>;

/// A point in time on the state's clock (CLOCK_BOOTTIME ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Instant(u64);

impl Instant {
    pub(super) fn at(ns: u64) -> Self {
        Self(ns)
    }

    /// Nanoseconds on the state's clock.
    pub(super) fn ns(self) -> u64 {
        self.0
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// When a candidate's family scanned at `started`, for `took`, may be
/// scanned again: scans take at most 1 / [`SCAN_BUDGET`] of the time, and
/// never more often than every [`TICK`].
pub(super) fn scan_again_at(started: Instant, took: Duration) -> Instant {
    started + took.saturating_mul(SCAN_BUDGET).max(TICK)
}

/// One socket the worker has to look up.
pub(super) struct Pending {
    pub(super) cookie: u64,
    pub(super) inode: u64,
    /// When it entered CLOSE_WAIT (its fd is older, unless accepted since).
    pub(super) start_ns: u64,
    pub(super) candidates: Vec<u32>,
    /// No owner stored at connect(), no cgroup of its own: the candidates
    /// are only the processes that leaked before.
    pub(super) unnamed: bool,
    pub(super) dead: bool,
}

/// What the worker knows of the processes started since the last walk
/// (looked through in `newprocs`).
pub(super) struct NewProcesses {
    /// The processes the last walk listed (at start: those running then,
    /// which start-up's walk covers).
    pub(super) walked: HashSet<u32>,
    /// When a process may be scanned again.
    pub(super) next_rescan: Instant,
    /// Their socket fds, as inode → (pid, fd).
    pub(super) fds: HashMap<u64, (u32, i32)>,
    /// When each was scanned, and how many fds it had then (where the
    /// kernel says).
    pub(super) scanned: HashMap<u32, (Instant, Option<u64>)>,
}

impl NewProcesses {
    /// None yet: every process but `walked` counts as new.
    pub(super) fn since(walked: Vec<u32>) -> Self {
        Self {
            walked: walked.into_iter().collect(),
            next_rescan: Instant::at(0),
            fds: HashMap::new(),
            scanned: HashMap::new(),
        }
    }
}

/// The worker thread's state.
pub(super) struct Worker {
    pub(super) state: Arc<State>,
    pub(super) proc: ProcRoot,
    pub(super) known_pids: HashSet<u32>,
    /// When a walk may run again (see [`WALK_BUDGET`]).
    pub(super) next_walk: Instant,
    /// When the last walk began: a walk asked for before then is done.
    pub(super) walk_began: Option<Instant>,
    /// The processes started since the last walk, and what their scans saw.
    pub(super) new: NewProcesses,
    comms: HashMap<u32, Option<Comm>>,
    /// When each candidate's family may be scanned again.
    next_scan: HashMap<u32, Instant>,
    /// Sockets their candidates did not hold, since when.
    missed: HashMap<u64, Instant>,
    /// Bumped whenever holders are set (see `refresh`).
    pub(super) epoch: u64,
    /// Processes seen holding tracked sockets: the candidates of a socket
    /// nothing else points at (a leaking process leaks again).
    pub(super) holder_pids: HashSet<u32>,
    cgroups: Cgroups,
}

impl Worker {
    pub(super) fn new(state: Arc<State>, proc: ProcRoot) -> Self {
        let pids = proc.pids();
        Self {
            known_pids: pids.iter().copied().collect(),
            new: NewProcesses::since(pids),
            state,
            proc,
            next_walk: Instant::at(0),
            walk_began: None,
            comms: HashMap::new(),
            next_scan: HashMap::new(),
            missed: HashMap::new(),
            holder_pids: HashSet::new(),
            cgroups: Cgroups::default(),
            epoch: 0,
        }
    }

    /// Now, on the state's clock (a test's clock in unit tests).
    pub(super) fn now(&self) -> Instant {
        Instant(self.state.clock.now_ns())
    }

    /// Whether some socket still waits for its holders (or a dead one for
    /// its verdict): the worker then looks again after a [`TICK`].
    pub(super) fn has_pending(&self) -> bool {
        let table = self.state.lock_table();
        table.unresolved().next().is_some() || table.unverified().next().is_some()
    }

    /// Whether there is anything for the periodic refresh to re-check.
    pub(super) fn has_holders(&self) -> bool {
        let table = self.state.lock_table();
        !table.is_empty() || table.dead_len() > 0
    }

    /// Process names are read again at the next pass.
    pub(super) fn forget_comms(&mut self) {
        self.comms.clear();
    }

    fn comm(&mut self, pid: u32) -> Option<Comm> {
        let proc = &self.proc;
        *self.comms.entry(pid).or_insert_with(|| proc.comm(pid))
    }

    pub(super) fn holder(&mut self, pid: u32, fd: i32) -> Option<Holder> {
        self.comm(pid).map(|comm| Holder { pid, fd, comm })
    }

    /// Sockets past their grace that still need holders, and dead sockets
    /// past their grace that still need a verdict. A live socket's
    /// candidates: the process the kernel named, else its cgroup's
    /// processes; none (`unnamed`) leaves it to the processes started
    /// since the last walk, then to those that leaked before (see
    /// [`Self::resolve_pending`]), then to a walk.
    fn pending(&mut self) -> Vec<Pending> {
        let now = self.state.clock.now_ns();
        let grace = GRACE.as_nanos() as u64;
        let mut out = Vec::new();
        let mut unaccepted = Vec::new();
        let live: Vec<(u64, u64, u64, Option<u32>, u64)> = {
            let table = self.state.lock_table();
            table
                .unresolved()
                .filter(|e| now.saturating_sub(e.start_ns) >= grace)
                .map(|e| {
                    (
                        e.cookie,
                        e.inode,
                        e.start_ns,
                        e.hint.map(|h| h.pid),
                        e.cgroup,
                    )
                })
                .collect()
        };
        // One listing per cgroup per pass, however many sockets it holds.
        let mut members: HashMap<u64, Vec<u32>> = HashMap::new();
        for (cookie, inode, start_ns, hint, cgroup) in live {
            if inode == 0 {
                unaccepted.push(cookie);
                continue;
            }
            let candidates = match hint {
                Some(pid) => vec![pid],
                None => {
                    let (cgroups, proc) = (&mut self.cgroups, &self.proc);
                    members
                        .entry(cgroup)
                        .or_insert_with(|| cgroups.processes(proc, cgroup))
                        .clone()
                }
            };
            let unnamed = candidates.is_empty();
            out.push(Pending {
                cookie,
                inode,
                start_ns,
                candidates,
                unnamed,
                dead: false,
            });
        }
        let mut table = self.state.lock_table();
        // Unaccepted: no fd anywhere; the listener is the owner.
        if !unaccepted.is_empty() {
            self.epoch += 1;
        }
        for cookie in unaccepted {
            table.set_holders(cookie, Vec::new());
        }
        let dead_grace = DEAD_GRACE.as_nanos() as u64;
        for dead in table.unverified() {
            if now.saturating_sub(dead.left_ns) < dead_grace {
                continue;
            }
            let mut candidates: Vec<u32> = dead.sock.holders.iter().map(|h| h.pid).collect();
            candidates.extend(dead.sock.hint.map(|h| h.pid));
            // Never resolved (it left while young) and no hint: an orphan,
            // left to a walk.
            out.push(Pending {
                cookie: dead.sock.cookie,
                inode: dead.sock.inode,
                start_ns: dead.sock.start_ns,
                candidates,
                unnamed: false,
                dead: true,
            });
        }
        out
    }

    /// Looks up pending sockets: those nothing names first among the
    /// processes started since the last walk, then every one among its
    /// candidates' families (the known leakers for those nothing names);
    /// falls back to one walk for what is still missing.
    pub(super) fn resolve_pending(&mut self) {
        let now = self.now();
        self.next_scan.retain(|_, t| *t > now);
        // Sockets nothing names are looked for among the processes started
        // since the last walk first (cheap: each is scanned once), before
        // the processes that leaked before.
        let (unnamed, mut pending): (Vec<Pending>, Vec<Pending>) =
            self.pending().into_iter().partition(|p| p.unnamed);
        if !unnamed.is_empty() {
            let found = self.scan_new_processes(&unnamed.iter().collect::<Vec<_>>());
            let (hit, rest): (Vec<Pending>, Vec<Pending>) = unnamed
                .into_iter()
                .partition(|p| found.contains_key(&p.inode));
            if !hit.is_empty() {
                self.apply(&hit, &found, false);
            }
            let known: Vec<u32> = self.holder_pids.iter().copied().collect();
            pending.extend(rest.into_iter().map(|p| Pending {
                candidates: known.clone(),
                ..p
            }));
        }
        // Candidates over their scan budget wait for a later pass; sockets
        // nothing points at wait for a walk.
        let (orphans, pending): (Vec<Pending>, Vec<Pending>) = pending
            .into_iter()
            .filter(|p| !p.candidates.iter().any(|c| self.next_scan.contains_key(c)))
            .partition(|p| p.candidates.is_empty());
        let walk_due = now >= self.next_walk;
        if !orphans.is_empty() && walk_due {
            debug!(
                sockets = orphans.len(),
                "sockets no process points at: walking /proc"
            );
            self.walk_for_lookup();
            return;
        }
        if pending.is_empty() {
            return;
        }
        tracing::trace!(pending = pending.len(), "looking up holders");
        let found = self.scan_candidates(&pending);
        // A socket its candidates do not hold may just have been closed
        // (its leave event not applied yet): only one still missing after
        // MISS_PATIENCE is worth a walk.
        let missing: Vec<u64> = pending
            .iter()
            .filter(|p| p.inode != 0 && !found.contains_key(&p.inode))
            .map(|p| p.cookie)
            .collect();
        self.missed.retain(|cookie, _| missing.contains(cookie));
        for cookie in &missing {
            self.missed.entry(*cookie).or_insert(now);
        }
        let overdue = self.missed.values().any(|t| now - *t >= MISS_PATIENCE);
        let missing = missing.len();
        if overdue && walk_due {
            self.missed.clear();
            debug!(
                missing,
                "sockets not held by their candidates: walking /proc"
            );
            self.walk_for_lookup();
            return;
        }
        self.apply(&pending, &found, missing > 0);
    }

    /// The families of `pending`'s candidates, each scanned once and then
    /// left alone for its scan budget.
    fn scan_candidates(&mut self, pending: &[Pending]) -> Found {
        let mut found: Found = HashMap::new();
        let mut scanned = HashSet::new();
        let candidates: HashSet<u32> = pending
            .iter()
            .flat_map(|p| p.candidates.iter().copied())
            .collect();
        for c in candidates {
            let started = self.now();
            let cpu = thread_cpu();
            let family: Vec<u32> = self
                .proc
                .family(c, FAMILY_LIMIT)
                .into_iter()
                .filter(|pid| scanned.insert(*pid))
                .collect();
            for (inode, holders) in self.scan(&family) {
                found.entry(inode).or_default().extend(holders);
            }
            // What the scan cost is this thread's CPU time: a loaded host
            // stretches the wall-clock time, not the work.
            let took = (self.now() - started).min(thread_cpu().saturating_sub(cpu));
            self.next_scan.insert(c, scan_again_at(started, took));
        }
        found
    }

    /// Records holders found for `pending`. Sockets not found stay
    /// unresolved when `retry` (a walk will come), dead ones not held are
    /// dropped.
    pub(super) fn set_holders(&mut self, pending: &[Pending], found: &Found, retry: bool) {
        self.epoch += 1;
        let now = self.state.clock.now_ns();
        let mut latencies = Vec::new();
        let mut table = self.state.lock_table();
        let mut observe = |entry: &SockEntry| {
            if !entry.resolved && !entry.age_estimated {
                latencies.push(Duration::from_nanos(now.saturating_sub(entry.start_ns)));
            }
        };
        for p in pending {
            let holders = found.get(&p.inode).map_or_else(Vec::new, |h| h.to_vec());
            self.holder_pids.extend(holders.iter().map(|h| h.pid));
            if p.dead {
                if holders.is_empty() {
                    table.remove_dead(p.cookie);
                } else {
                    table.verify_dead(p.cookie, holders);
                }
            } else if let Some(entry) = table.get(p.cookie) {
                if holders.is_empty() && retry {
                    continue;
                }
                observe(&entry);
                table.set_holders(p.cookie, holders);
            }
        }
        // Fair: a walk calls this chunk after chunk.
        TableGuard::unlock_fair(table);
        for l in latencies {
            self.state.telemetry.observe_attribution(l);
        }
    }

    /// [`Self::set_holders`], then the younger sockets whose holders the
    /// scans just saw are resolved too: the fd tables were read anyway.
    pub(super) fn apply(&mut self, pending: &[Pending], found: &Found, retry: bool) {
        self.set_holders(pending, found, retry);
        if found.is_empty() {
            return;
        }
        let now = self.state.clock.now_ns();
        let mut latencies = Vec::new();
        let mut table = self.state.lock_table();
        let seen: Vec<(u64, Vec<Holder>)> = table
            .unresolved()
            .filter_map(|e| Some((e.cookie, found.get(&e.inode)?.to_vec())))
            .collect();
        for (cookie, holders) in seen {
            self.holder_pids.extend(holders.iter().map(|h| h.pid));
            if let Some(entry) = table.get(cookie)
                && !entry.resolved
                && !entry.age_estimated
            {
                latencies.push(Duration::from_nanos(now.saturating_sub(entry.start_ns)));
            }
            table.set_holders(cookie, holders);
        }
        // Fair: a walk calls this chunk after chunk.
        TableGuard::unlock_fair(table);
        for l in latencies {
            self.state.telemetry.observe_attribution(l);
        }
    }

    /// Socket fds of `pids`, as inode → holders.
    pub(super) fn scan(&mut self, pids: &[u32]) -> Found {
        self.scan_for(pids, None)
    }
}
