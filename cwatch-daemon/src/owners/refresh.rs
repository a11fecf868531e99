//! The periodic re-check of holders: sockets held by several fds (a single
//! holder's close would have ended CLOSE_WAIT in the kernel) and processes
//! forked by holders since the last refresh.
use std::collections::HashSet;

use tracing::debug;

use super::{Worker, procfs};
use crate::table::Holder;

impl Worker {
    /// Re-checks sockets held by several fds (a single holder's close would
    /// have ended CLOSE_WAIT in the kernel) and scans processes forked by
    /// holders since the last refresh.
    pub(super) fn refresh(&mut self) {
        let (shared_socks, holder_pids) = {
            let table = self.shared.lock_table();
            let mut shared_socks = Vec::new();
            let mut holder_pids = HashSet::new();
            let dead = table.dead().filter(|d| d.verified).map(|d| &d.sock);
            for entry in table.iter().chain(dead) {
                holder_pids.extend(entry.holders.iter().map(|h| h.pid));
                if entry.holders.len() > 1 {
                    shared_socks.push((entry.cookie, entry.inode, entry.holders.clone()));
                }
            }
            (shared_socks, holder_pids)
        };
        let pids = procfs::pids();
        let new: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| !self.known_pids.contains(p))
            .filter(|p| procfs::parent(*p).is_some_and(|pp| holder_pids.contains(&pp)))
            .collect();
        self.known_pids = pids.into_iter().collect();
        let mut changed: Vec<u64> = Vec::new();
        for (cookie, inode, holders) in &shared_socks {
            if holders.iter().any(|h| !procfs::holds(h.pid, h.fd, *inode)) {
                changed.push(*cookie);
            }
        }
        if changed.is_empty() && new.is_empty() {
            return;
        }
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
        let found = self.scan(&pids);
        let scanned: HashSet<u32> = pids.iter().copied().collect();
        let mut table = self.shared.lock_table();
        let update = |entry: &mut crate::table::SockEntry| {
            let mut holders: Vec<Holder> = entry
                .holders
                .iter()
                .copied()
                .filter(|h| !scanned.contains(&h.pid))
                .collect();
            holders.extend(found.get(&entry.inode).into_iter().flatten().copied());
            if holders != entry.holders {
                entry.set_holders(holders);
            }
        };
        for entry in table.iter_mut() {
            update(entry);
        }
        for dead in table.dead_mut().filter(|d| d.verified) {
            update(&mut dead.sock);
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
}
