/*!
The processes started since the last walk of `/proc`: where a leaked socket
that nothing names (no owner stored at `connect()`, the root cgroup) most
often is — a worker restarted, a new job. Each is scanned once and its
socket fds kept until the next walk, so that finding the holder of such a
socket costs a scan of the new processes, not of every process; a process
is scanned again only for a socket still missing that entered CLOSE_WAIT
after its scan and only if its fd count changed, those rescans within
[`NEW_SCAN_BUDGET`].
*/
use std::collections::{HashMap, HashSet};

use tracing::debug;

use super::{
    NEW_SCAN_BUDGET, TICK,
    worker::{Found, Pending, Worker},
};
use crate::clock::thread_cpu;

impl Worker {
    /// The processes the last walk did not see (started since): a socket
    /// nothing points at most often belongs to one (a worker restarted, a
    /// new job). Each is scanned once and its socket fds kept until the
    /// next walk; `pending` is looked up there first, then among the ones
    /// not scanned yet, and only then are scans older than a socket still
    /// missing done again (an fd made after a scan is not in it). Within a
    /// budget: after scans that cost `d`, the next wait `d` ×
    /// [`NEW_SCAN_BUDGET`] (at least a [`TICK`]).
    pub(super) fn scan_new_processes(&mut self, pending: &[&Pending]) -> Found {
        let mut found = HashMap::new();
        let rest = self.look_up_new(pending, &mut found);
        if rest.is_empty() {
            return found;
        }
        let pids = self.proc.pids();
        let listed: HashSet<u32> = pids.iter().copied().collect();
        self.new.scanned.retain(|pid, _| listed.contains(pid));
        let new: Vec<u32> = pids
            .into_iter()
            .filter(|p| !self.new.walked.contains(p))
            .collect();
        let unscanned: Vec<u32> = new
            .iter()
            .copied()
            .filter(|p| !self.new.scanned.contains_key(p))
            .collect();
        let first = self.scan_new(&unscanned);
        let rest = self.look_up_new(&rest, &mut found);
        let started = self.now();
        let Some(newest_ns) = rest.iter().map(|p| p.start_ns).max() else {
            return found;
        };
        if started < self.new.next_rescan {
            return found;
        }
        // Scanned before that socket entered CLOSE_WAIT, and its fds
        // changed since (where the kernel says how many it has).
        let cpu = thread_cpu();
        let stale: Vec<u32> = new
            .into_iter()
            .filter(|p| {
                self.new.scanned.get(p).is_some_and(|(at, fds)| {
                    at.ns() < newest_ns
                        && (fds.is_none() || self.proc.fd_count(*p).ok().flatten() != *fds)
                })
            })
            .collect();
        let again = self.scan_new(&stale);
        self.look_up_new(&rest, &mut found);
        let took = (self.now() - started).min(thread_cpu().saturating_sub(cpu));
        self.new.next_rescan = started + took.saturating_mul(NEW_SCAN_BUDGET).max(TICK);
        debug!(
            first,
            again,
            looked_for = pending.len(),
            found = found.len(),
            "scanned processes started since the last walk"
        );
        found
    }

    /// Scans `pids` into the new processes' fds; how many.
    fn scan_new(&mut self, pids: &[u32]) -> usize {
        let at = self.now();
        for pid in pids {
            let count = self.proc.fd_count(*pid).ok().flatten();
            let fds = self.proc.socket_fds(*pid).unwrap_or_default();
            self.new
                .fds
                .extend(fds.into_iter().map(|(fd, inode)| (inode, (*pid, fd))));
            self.new.scanned.insert(*pid, (at, count));
        }
        if !pids.is_empty() {
            self.state.telemetry.procfs_scans(pids.len() as u64, 0);
        }
        pids.len()
    }

    /// Looks `pending` up in the new processes' fds (each hit checked with
    /// one readlink: the fd may be another file since); what is not found.
    fn look_up_new<'a>(&mut self, pending: &[&'a Pending], found: &mut Found) -> Vec<&'a Pending> {
        let mut rest = Vec::new();
        for p in pending {
            let hit = self.new.fds.get(&p.inode).copied();
            match hit {
                Some((pid, fd)) if self.proc.holds(pid, fd, p.inode) => {
                    if let Some(h) = self.holder(pid, fd) {
                        found.insert(p.inode, smallvec::smallvec![h]);
                        continue;
                    }
                    rest.push(*p);
                }
                _ => rest.push(*p),
            }
        }
        rest
    }
}
