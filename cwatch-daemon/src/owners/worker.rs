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

use tracing::debug;

use super::{
    DEAD_GRACE, FAMILY_LIMIT, GRACE, MISS_PATIENCE, SCAN_BUDGET, TICK, WALK_MIN_GAP,
    cgroups::Cgroups, procfs::ProcRoot,
};
use crate::{
    state::State,
    table::{Comm, Holder, SockEntry},
};

/// A point in time on the state's clock (CLOCK_BOOTTIME ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Instant(u64);

#[cfg(test)]
impl Instant {
    pub(super) fn at(ns: u64) -> Self {
        Self(ns)
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

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec.unsigned_abs(), t.tv_nsec.unsigned_abs() as u32)
}

/// One socket the worker has to look up.
struct Pending {
    cookie: u64,
    inode: u64,
    candidates: Vec<u32>,
    dead: bool,
}

/// The worker thread's state.
pub(super) struct Worker {
    pub(super) state: Arc<State>,
    pub(super) proc: ProcRoot,
    pub(super) known_pids: HashSet<u32>,
    last_walk: Option<Instant>,
    comms: HashMap<u32, Option<Comm>>,
    /// When each candidate's family may be scanned again.
    next_scan: HashMap<u32, Instant>,
    /// Sockets their candidates did not hold, since when.
    missed: HashMap<u64, Instant>,
    /// Bumped whenever holders are set (see `refresh`).
    pub(super) epoch: u64,
    /// Processes seen holding tracked sockets: the candidates of a socket
    /// nothing else points at (a leaking process leaks again).
    holder_pids: HashSet<u32>,
    cgroups: Cgroups,
}

impl Worker {
    pub(super) fn new(state: Arc<State>, proc: ProcRoot) -> Self {
        Self {
            known_pids: proc.pids().into_iter().collect(),
            state,
            proc,
            last_walk: None,
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

    fn holder(&mut self, pid: u32, fd: i32) -> Option<Holder> {
        self.comm(pid).map(|comm| Holder { pid, fd, comm })
    }

    /// Where the holder of a socket with owner hint `hint` and cgroup
    /// `cgroup` is likely to be: the process the kernel named, else its
    /// cgroup's processes, else the processes known to hold tracked sockets.
    /// Empty: nothing points anywhere, only a walk can tell.
    fn candidates(&mut self, hint: Option<u32>, cgroup: u64) -> Vec<u32> {
        if let Some(pid) = hint {
            return vec![pid];
        }
        let members = self.cgroups.processes(&self.proc, cgroup);
        if !members.is_empty() {
            return members;
        }
        self.holder_pids.iter().copied().collect()
    }

    /// Sockets past their grace that still need holders, and dead sockets
    /// past their grace that still need a verdict.
    fn pending(&mut self) -> Vec<Pending> {
        let now = self.state.clock.now_ns();
        let grace = GRACE.as_nanos() as u64;
        let mut out = Vec::new();
        let mut unaccepted = Vec::new();
        let live: Vec<(u64, u64, Option<u32>, u64)> = {
            let table = self.state.lock_table();
            table
                .unresolved()
                .filter(|e| now.saturating_sub(e.start_ns) >= grace)
                .map(|e| (e.cookie, e.inode, e.hint.map(|h| h.pid), e.cgroup))
                .collect()
        };
        for (cookie, inode, hint, cgroup) in live {
            if inode == 0 {
                unaccepted.push(cookie);
                continue;
            }
            out.push(Pending {
                cookie,
                inode,
                candidates: self.candidates(hint, cgroup),
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
                candidates,
                dead: true,
            });
        }
        out
    }

    /// Looks up pending sockets among their candidates' families; falls back
    /// to one walk for those found nowhere.
    pub(super) fn resolve_pending(&mut self) {
        let now = self.now();
        self.next_scan.retain(|_, t| *t > now);
        // Candidates over their scan budget wait for a later pass; sockets
        // nothing points at wait for a walk.
        let (orphans, pending): (Vec<Pending>, Vec<Pending>) = self
            .pending()
            .into_iter()
            .filter(|p| !p.candidates.iter().any(|c| self.next_scan.contains_key(c)))
            .partition(|p| p.candidates.is_empty());
        let walk_due = self.last_walk.is_none_or(|t| now - t >= WALK_MIN_GAP);
        if !orphans.is_empty() && walk_due {
            debug!(
                sockets = orphans.len(),
                "sockets no process points at: walking /proc"
            );
            self.walk();
            return;
        }
        if pending.is_empty() {
            return;
        }
        tracing::trace!(pending = pending.len(), "looking up holders");
        let mut found: HashMap<u64, Vec<Holder>> = HashMap::new();
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
            self.walk();
            return;
        }
        self.apply(&pending, &found, missing > 0);
    }

    /// Records holders found for `pending`. Sockets not found stay
    /// unresolved when `retry` (a walk will come), dead ones not held are
    /// dropped.
    fn apply(&mut self, pending: &[Pending], found: &HashMap<u64, Vec<Holder>>, retry: bool) {
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
            let holders = found.get(&p.inode).cloned().unwrap_or_default();
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
        // Younger sockets whose holders the scans just saw are resolved too:
        // the fd tables were read anyway.
        if !found.is_empty() {
            let seen: Vec<(u64, Vec<Holder>)> = table
                .unresolved()
                .filter_map(|e| Some((e.cookie, found.get(&e.inode)?.clone())))
                .collect();
            for (cookie, holders) in seen {
                self.holder_pids.extend(holders.iter().map(|h| h.pid));
                if let Some(entry) = table.get(cookie) {
                    observe(&entry);
                }
                table.set_holders(cookie, holders);
            }
        }
        drop(table);
        for l in latencies {
            self.state.telemetry.observe_attribution(l);
        }
    }

    /// Socket fds of `pids`, as inode → holders.
    pub(super) fn scan(&mut self, pids: &[u32]) -> HashMap<u64, Vec<Holder>> {
        let mut out: HashMap<u64, Vec<Holder>> = HashMap::new();
        for &pid in pids {
            let Ok(fds) = self.proc.socket_fds(pid) else {
                continue;
            };
            for (fd, inode) in fds {
                if let Some(h) = self.holder(pid, fd) {
                    out.entry(inode).or_default().push(h);
                }
            }
        }
        self.state.telemetry.procfs_scans(pids.len() as u64, 0);
        out
    }

    /// Scans every process and sets the holders of every tracked socket.
    pub(super) fn walk(&mut self) {
        let pids = self.proc.pids();
        // Learned afresh from what the walk finds: exited processes go.
        self.holder_pids.clear();
        self.known_pids = pids.iter().copied().collect();
        let found = self.scan(&pids);
        self.last_walk = Some(self.now());
        self.state.telemetry.procfs_scans(0, 1);
        // Young dead sockets may just be closing: leave them to their grace.
        let now = self.state.clock.now_ns();
        let grace = DEAD_GRACE.as_nanos() as u64;
        let pending: Vec<Pending> = {
            let table = self.state.lock_table();
            let live = table.iter().map(|e| Pending {
                cookie: e.cookie,
                inode: e.inode,
                candidates: Vec::new(),
                dead: false,
            });
            let dead = table
                .dead()
                .filter(|d| now.saturating_sub(d.left_ns) >= grace)
                .map(|d| Pending {
                    cookie: d.sock.cookie,
                    inode: d.sock.inode,
                    candidates: Vec::new(),
                    dead: true,
                });
            live.chain(dead).filter(|p| p.inode != 0).collect()
        };
        self.apply(&pending, &found, false);
    }
}
