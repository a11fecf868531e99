/*!
Owner attribution: which processes hold each tracked socket, and under which
fd.

The kernel already names a process for most sockets at the transition (the
one that called connect(), or listen() for accepted sockets): the gauges use
it at once. This module finds the real holders from `/proc/<pid>/fd`
(`socket:[inode]`) on its own thread, without ever walking all of `/proc` per
event:

- a socket that stays in CLOSE_WAIT past [`GRACE`] is looked up in the fd
  tables of the kernel's candidate process and its descendants (prefork
  workers, forked children), once per pass however many sockets it holds,
  and no more often than keeps those scans under 1 % of the time
  ([`SCAN_BUDGET`]);
- only sockets found nowhere among their candidates (fds passed with
  SCM_RIGHTS, sockets that predate cwatch) trigger a walk of every process,
  at most once per [`WALK_MIN_GAP`]; reconciliation asks for one walk per
  period, which also catches holders that appeared since;
- every `holders_refresh`, sockets held by several fds are re-checked with
  one `readlink` per holder, and new processes forked by a holder are
  scanned;
- a socket that left CLOSE_WAIT and is still not destroyed after [`DEAD_GRACE`]
  is checked: if an fd still holds it, it is a dead socket held (the kernel
  closed it, or it was shut down without close()).
*/
mod handle;
pub mod procfs;
mod refresh;

pub use handle::Handle;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use tracing::debug;

use crate::{
    Shared,
    table::{Comm, Holder},
};

/// Sockets younger than this are left to the kernel's owner hint: many
/// CLOSE_WAIT sockets are closed within a millisecond or two.
pub const GRACE: Duration = Duration::from_millis(20);
/// A socket that left CLOSE_WAIT is checked for fds still holding it only
/// after this long: a socket closed normally is destroyed well before.
pub const DEAD_GRACE: Duration = Duration::from_secs(1);
/// How often the worker looks for sockets past their grace.
pub const TICK: Duration = Duration::from_millis(25);
/// Scanning a candidate's family is allowed to take this share of the
/// wall-clock time: after a scan that took `d`, the next waits `d / share`.
/// A 25-fd process can be rescanned every tick; a server with 10,000 fds
/// (a scan of ~10 ms) about once a second.
pub const SCAN_BUDGET: u32 = 100;
/// A socket its candidates do not hold triggers a walk only once it has
/// been missing this long.
pub const MISS_PATIENCE: Duration = Duration::from_secs(1);
/// Walks of all of `/proc` asked for by lookups that failed are at least
/// this far apart.
pub const WALK_MIN_GAP: Duration = Duration::from_secs(5);
/// At most this many processes of a candidate's family are scanned.
const FAMILY_LIMIT: usize = 256;

/// What the worker is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Scan every process now (reconciliation, start-up).
    Walk,
}

/// How the worker's scans went, for the self-metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanCounts {
    pub processes: u64,
    pub walks: u64,
}

/// One socket the worker has to look up.
struct Pending {
    cookie: u64,
    inode: u64,
    candidates: Vec<u32>,
    dead: bool,
}

/// The worker thread's state.
struct Worker {
    shared: Arc<Shared>,
    known_pids: HashSet<u32>,
    last_walk: Option<Instant>,
    comms: HashMap<u32, Option<Comm>>,
    /// When each candidate's family may be scanned again.
    next_scan: HashMap<u32, Instant>,
    /// Sockets their candidates did not hold, since when.
    missed: HashMap<u64, Instant>,
    /// Bumped whenever this worker sets holders (see `refresh`).
    epoch: u64,
    /// What the last refresh learned from the whole table.
    refresh_cache: refresh::Cache,
}

/// Walks every process once, now, on the calling thread: start-up does it
/// before reporting ready, so the first scrape already names the holders.
pub fn walk_now(shared: &Arc<Shared>) {
    let mut worker = Worker::new(Arc::clone(shared));
    worker.walk();
}

/// Runs the attribution worker until the sender side is dropped.
pub fn run(shared: Arc<Shared>, work: mpsc::Receiver<Work>) {
    let refresh = shared.config().holders_refresh;
    let mut worker = Worker::new(shared);
    let mut next_refresh = Instant::now() + refresh;
    loop {
        match work.recv_timeout(TICK) {
            Ok(Work::Walk) => {
                while work.try_recv().is_ok() {}
                worker.walk();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        worker.resolve_pending();
        if Instant::now() >= next_refresh {
            worker.refresh();
            next_refresh = Instant::now() + refresh;
        }
        worker.comms.clear();
    }
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            known_pids: procfs::pids().into_iter().collect(),
            last_walk: None,
            comms: HashMap::new(),
            next_scan: HashMap::new(),
            missed: HashMap::new(),
            epoch: 0,
            refresh_cache: refresh::Cache::default(),
        }
    }

    fn comm(&mut self, pid: u32) -> Option<Comm> {
        *self.comms.entry(pid).or_insert_with(|| procfs::comm(pid))
    }

    fn holder(&mut self, pid: u32, fd: i32) -> Option<Holder> {
        self.comm(pid).map(|comm| Holder { pid, fd, comm })
    }

    /// Sockets past their grace that still need holders, and dead sockets
    /// past their grace that still need a verdict.
    fn pending(&mut self) -> Vec<Pending> {
        let now = self.shared.clock.now_ns();
        let grace = GRACE.as_nanos() as u64;
        let mut table = self.shared.lock_table();
        let mut out = Vec::new();
        let mut unaccepted = Vec::new();
        for entry in table.unresolved() {
            if now.saturating_sub(entry.start_ns) < grace {
                continue;
            }
            if entry.inode == 0 {
                unaccepted.push(entry.cookie);
                continue;
            }
            out.push(Pending {
                cookie: entry.cookie,
                inode: entry.inode,
                candidates: entry.hint.map(|h| h.pid).into_iter().collect(),
                dead: false,
            });
        }
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
    fn resolve_pending(&mut self) {
        let now = Instant::now();
        self.next_scan.retain(|_, t| *t > now);
        // Candidates over their scan budget wait for a later pass.
        let pending: Vec<Pending> = self
            .pending()
            .into_iter()
            .filter(|p| !p.candidates.iter().any(|c| self.next_scan.contains_key(c)))
            .collect();
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
            let started = Instant::now();
            let family: Vec<u32> = procfs::family(c, FAMILY_LIMIT)
                .into_iter()
                .filter(|pid| scanned.insert(*pid))
                .collect();
            for (inode, holders) in self.scan(&family) {
                found.entry(inode).or_default().extend(holders);
            }
            let next = started.elapsed().saturating_mul(SCAN_BUDGET).max(TICK);
            self.next_scan.insert(c, started + next);
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
        let overdue = self
            .missed
            .values()
            .any(|t| now.duration_since(*t) >= MISS_PATIENCE);
        let walk_due = self.last_walk.is_none_or(|t| t.elapsed() >= WALK_MIN_GAP);
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
        let now = self.shared.clock.now_ns();
        let mut latencies = Vec::new();
        let mut table = self.shared.lock_table();
        let mut observe = |entry: &crate::table::SockEntry| {
            if !entry.resolved && !entry.age_estimated {
                latencies.push(Duration::from_nanos(now.saturating_sub(entry.start_ns)));
            }
        };
        for p in pending {
            let holders = found.get(&p.inode).cloned().unwrap_or_default();
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
                observe(entry);
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
                if let Some(entry) = table.get(cookie) {
                    observe(entry);
                }
                table.set_holders(cookie, holders);
            }
        }
        drop(table);
        for l in latencies {
            self.shared.metrics.observe_attribution(l);
        }
    }

    /// Socket fds of `pids`, as inode → holders.
    fn scan(&mut self, pids: &[u32]) -> HashMap<u64, Vec<Holder>> {
        let mut out: HashMap<u64, Vec<Holder>> = HashMap::new();
        for &pid in pids {
            let Ok(fds) = procfs::socket_fds(pid) else {
                continue;
            };
            for (fd, inode) in fds {
                if let Some(h) = self.holder(pid, fd) {
                    out.entry(inode).or_default().push(h);
                }
            }
        }
        self.shared.metrics.procfs_scans(ScanCounts {
            processes: pids.len() as u64,
            walks: 0,
        });
        out
    }

    /// Scans every process and sets the holders of every tracked socket.
    fn walk(&mut self) {
        let pids = procfs::pids();
        self.known_pids = pids.iter().copied().collect();
        let found = self.scan(&pids);
        self.last_walk = Some(Instant::now());
        self.shared.metrics.procfs_scans(ScanCounts {
            processes: 0,
            walks: 1,
        });
        // Young dead sockets may just be closing: leave them to their grace.
        let now = self.shared.clock.now_ns();
        let grace = DEAD_GRACE.as_nanos() as u64;
        let pending: Vec<Pending> = {
            let table = self.shared.lock_table();
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
