//! The periodic re-check of holders: sockets held by several fds (a single
//! holder's close would have ended CLOSE_WAIT in the kernel) and processes
//! forked by holders since the last refresh.
//!
//! Which sockets are shared and which processes hold sockets is learned from
//! the whole table, but only when it may have changed: its size, or holders
//! set by this worker, and once a minute regardless. At a million idle
//! sockets a refresh then costs a listing of `/proc`, not a walk of the
//! table every few seconds.
use std::collections::HashSet;

use crate::state::TableGuard;
use tracing::debug;

use super::worker::Worker;
use crate::table::{Holder, SockEntry};

/// Refreshes between two looks at the whole table, at most.
const REBUILD_EVERY: u32 = 12;
/// Sockets looked at per hold of the table's lock.
const REBUILD_CHUNK: usize = 8192;

/// The refresh, with the shared sockets and holding processes of the table
/// as last seen.
#[derive(Debug, Default)]
pub(super) struct Refresh {
    /// (table size, dead entries, worker epoch) when built; `None`: never.
    stamp: Option<(usize, usize, u64)>,
    since: u32,
    shared_socks: Vec<(u64, u64, Vec<Holder>)>,
    holder_pids: HashSet<u32>,
}

impl Refresh {
    /// Re-checks sockets held by several fds (a single holder's close would
    /// have ended CLOSE_WAIT in the kernel) and scans processes forked by
    /// holders since the last refresh.
    pub(super) fn run(&mut self, w: &mut Worker) {
        self.rebuild_if_stale(w);
        let shared_socks = self.shared_socks.clone();
        let holder_pids = &self.holder_pids;
        let pids = w.proc.pids();
        let new: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| !w.known_pids.contains(p))
            .filter(|p| {
                w.proc
                    .parent(*p)
                    .is_some_and(|pp| holder_pids.contains(&pp))
            })
            .collect();
        w.known_pids = pids.into_iter().collect();
        let mut changed: Vec<u64> = Vec::new();
        for (cookie, inode, holders) in &shared_socks {
            if holders.iter().any(|h| !w.proc.holds(h.pid, h.fd, *inode)) {
                changed.push(*cookie);
            }
        }
        if changed.is_empty() && new.is_empty() {
            return;
        }
        w.epoch += 1;
        // Rescan the processes involved: the holders of changed sockets and
        // the new children.
        let mut pids: Vec<u32> = new.clone();
        for (cookie, _, holders) in &shared_socks {
            if changed.contains(cookie) {
                pids.extend(holders.iter().map(|h| h.pid));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        let found = w.scan(&pids);
        let scanned: HashSet<u32> = pids.iter().copied().collect();
        let mut table = w.state.lock_table();
        // The holders of an entry, with what the scanned processes hold now.
        let rescanned = |entry: &SockEntry| -> Option<Vec<Holder>> {
            let mut holders: Vec<Holder> = entry
                .holders
                .iter()
                .copied()
                .filter(|h| !scanned.contains(&h.pid))
                .collect();
            holders.extend(found.get(&entry.inode).into_iter().flatten().copied());
            holders.sort_unstable();
            holders.dedup();
            (holders != entry.holders).then_some(holders)
        };
        let changed: Vec<(u64, Vec<Holder>)> = table
            .iter()
            .filter_map(|e| rescanned(&e).map(|h| (e.cookie, h)))
            .collect();
        for (cookie, holders) in changed {
            table.set_holders(cookie, holders);
        }
        for dead in table.dead_mut().filter(|d| d.verified) {
            if let Some(holders) = rescanned(&dead.sock) {
                dead.sock.set_holders(holders);
            }
        }
        let gone: Vec<u64> = table
            .dead()
            .filter(|d| d.verified && d.sock.holders.is_empty())
            .map(|d| d.sock.cookie)
            .collect();
        for cookie in gone {
            table.remove_dead(cookie);
        }
        if !new.is_empty() {
            debug!(new = new.len(), "scanned processes forked by holders");
        }
    }

    fn rebuild_if_stale(&mut self, w: &Worker) {
        let (cookies, dead) = {
            let table = w.state.lock_table();
            let stamp = (table.len(), table.dead_len(), w.epoch);
            self.since += 1;
            if self.stamp == Some(stamp) && self.since < REBUILD_EVERY {
                return;
            }
            self.stamp = Some(stamp);
            self.since = 0;
            let dead: Vec<SockEntry> = table
                .dead()
                .filter(|d| d.verified)
                .map(|d| d.sock.clone())
                .collect();
            let mut cookies = Vec::with_capacity(table.len());
            cookies.extend(table.cookies());
            (cookies, dead)
        };
        self.shared_socks.clear();
        self.holder_pids.clear();
        let mut last = None;
        let mut look = |entry: &SockEntry| {
            for h in &entry.holders {
                // Sockets of one process tend to come in runs: skip the set.
                if last != Some(h.pid) {
                    self.holder_pids.insert(h.pid);
                    last = Some(h.pid);
                }
            }
            if entry.holders.len() > 1 {
                self.shared_socks
                    .push((entry.cookie, entry.inode, entry.holders.clone()));
            }
        };
        // The table's lock is taken per chunk and handed on fairly: at a
        // million sockets a look at all of them takes long enough to hold up
        // scrapes.
        for chunk in cookies.chunks(REBUILD_CHUNK) {
            let table = w.state.lock_table();
            for entry in chunk.iter().filter_map(|c| table.get(*c)) {
                look(&entry);
            }
            TableGuard::unlock_fair(table);
        }
        dead.iter().for_each(look);
    }
}
