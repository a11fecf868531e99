/*!
A walk of every process's fd table: the last resort of attribution (a
socket found nowhere else), the answer to start-up's first pass and
reconciliation's periodic one. It keeps only the inodes of tracked sockets
(a walk sees every socket of the host), records the holders in chunks of
the table's lock, and sets when the next walk may run: after a walk that
cost `d` of the thread's CPU time, `d` × [`WALK_BUDGET`] later at the
earliest.
*/
use std::collections::{HashMap, HashSet};

use crate::state::TableGuard;
use tracing::debug;

use super::{
    DEAD_GRACE, WALK_BUDGET, WALK_MIN_GAP,
    worker::{Found, NewProcesses, Pending, Worker},
};
use crate::clock::thread_cpu;

/// Holders a walk records per hold of the table's lock.
const APPLY_CHUNK: usize = 2048;
/// Sockets' worth of gauge groups a walk sorts per hold of the lock.
const SETTLE_CHUNK: usize = 65_536;

/// A socket's (cookie, inode, start), copied out of the table.
type Fields = (u64, u64, u64);

impl Worker {
    /// [`Self::scan`], keeping only the inodes in `wanted` (when given): a
    /// walk sees every socket of the host, most of them not tracked.
    pub(super) fn scan_for(&mut self, pids: &[u32], wanted: Option<&HashSet<u64>>) -> Found {
        let mut out: Found = HashMap::new();
        for &pid in pids {
            let Ok(fds) = self.proc.socket_fds(pid) else {
                continue;
            };
            for (fd, inode) in fds {
                if wanted.is_some_and(|w| !w.contains(&inode)) {
                    continue;
                }
                if let Some(h) = self.holder(pid, fd) {
                    out.entry(inode).or_default().push(h);
                }
            }
        }
        self.state.telemetry.procfs_scans(pids.len() as u64, 0);
        out
    }

    /// Scans every process and sets the holders of every tracked socket:
    /// a walk asked for (start-up, reconciliation) — the next lookup that
    /// finds a socket nowhere may walk at once.
    pub(super) fn walk(&mut self) {
        self.walk_within_budget(false);
    }

    /// [`Self::walk`] for a lookup that found a socket nowhere: the next
    /// such walk waits for the budget.
    pub(super) fn walk_for_lookup(&mut self) {
        self.walk_within_budget(true);
    }

    fn walk_within_budget(&mut self, budgeted: bool) {
        let started = std::time::Instant::now();
        let cpu_all = thread_cpu();
        self.walk_began = Some(self.now());
        // Young dead sockets may just be closing: leave them to their grace.
        let now = self.state.clock.now_ns();
        let grace = DEAD_GRACE.as_nanos() as u64;
        // Plain fields copied out under the lock (a million sockets'
        // unpacked entries held it for 160 ms), the work items made after.
        let (live, dead): (Vec<Fields>, Vec<Fields>) = {
            let table = self.state.lock_table();
            let live = table.inodes().filter(|&(_, inode, _)| inode != 0).collect();
            let dead = table
                .dead()
                .filter(|d| d.sock.inode != 0 && now.saturating_sub(d.left_ns) >= grace)
                .map(|d| (d.sock.cookie, d.sock.inode, d.sock.start_ns))
                .collect();
            (live, dead)
        };
        let item = |dead: bool| {
            move |(cookie, inode, start_ns): Fields| Pending {
                cookie,
                inode,
                start_ns,
                candidates: Vec::new(),
                unnamed: false,
                dead,
            }
        };
        let pending: Vec<Pending> = live
            .into_iter()
            .map(item(false))
            .chain(dead.into_iter().map(item(true)))
            .collect();
        // Sockets tracked from now on are looked for too (the unresolved
        // ones the scan happens to see); others are not kept.
        let cpu = thread_cpu();
        let pids = self.proc.pids();
        // Learned afresh from what the walk finds: exited processes go.
        self.holder_pids.clear();
        self.known_pids = pids.iter().copied().collect();
        self.new = NewProcesses::since(pids.clone());
        // Copied out first, rows not unpacked: at start-up every socket is
        // unresolved, and unpacking and hashing a million of them under the
        // lock held scrapes up.
        let unresolved: Vec<u64> = self.state.lock_table().unresolved_inodes().collect();
        let mut wanted: HashSet<u64> = pending.iter().map(|p| p.inode).collect();
        wanted.extend(unresolved);
        let found = self.scan_for(&pids, Some(&wanted));
        drop(wanted);
        // A lookup's walk that cost `d` of this thread's CPU time is
        // followed by no other for `d` × WALK_BUDGET.
        let walked = self.now();
        let took = thread_cpu().saturating_sub(cpu);
        if budgeted {
            self.next_walk = walked + took.saturating_mul(WALK_BUDGET).max(WALK_MIN_GAP);
        }
        self.state.telemetry.procfs_scans(0, 1);
        let scanned = started.elapsed();
        // In chunks, the table's lock taken for each and handed on fairly
        // (`set_holders`): scrapes and intake go on while a million holders
        // are recorded.
        for chunk in pending.chunks(APPLY_CHUNK) {
            self.set_holders(chunk, &found, false);
        }
        self.apply(&[], &found, false);
        // The process groups the holders went to were appended to out of
        // order: sorted here, a few at a time, not by the next scrape in
        // one hold of the lock.
        loop {
            let mut table = self.state.lock_table();
            let more = table.settle_gauges(SETTLE_CHUNK);
            TableGuard::unlock_fair(table);
            if !more {
                break;
            }
        }
        // What reconciliation's safety net is spaced by (with its own pass).
        self.state
            .telemetry
            .walk_cpu(thread_cpu().saturating_sub(cpu_all));
        debug!(
            processes = pids.len(),
            sockets = pending.len(),
            found = found.len(),
            scan_ms = scanned.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "walked /proc"
        );
    }
}
