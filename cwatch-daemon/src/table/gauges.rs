/*!
The socket table's live gauges: every CLOSE_WAIT socket counted in its
process group and its peer group ([`GroupIndex`]). Every change to a socket
goes through the table, which tells the gauges what it was and what it is
now ([`Gauges::change`]), so they stay exact as sockets come, go and change
owner.
*/
use std::{collections::BTreeMap, time::Duration};

use super::{
    entry::SockEntry,
    groups::{GroupIndex, frontier},
    keys::{GroupStats, PeerKey, ProcessKey},
};

/// Per-process and per-peer groups of the sockets in CLOSE_WAIT.
#[derive(Debug, Default)]
pub struct Gauges {
    processes: GroupIndex<ProcessKey>,
    peers: GroupIndex<PeerKey>,
    /// The groups are built at the first summary: start-up fills the table
    /// with every socket and then moves most of them to their holders, and
    /// counting every move would cost more than counting once.
    built: bool,
}

impl Gauges {
    pub fn is_built(&self) -> bool {
        self.built
    }

    /// Counts `entry`.
    pub fn add(&mut self, entry: &SockEntry) {
        if self.built {
            self.processes.add(ProcessKey::of(entry), entry.start_ns);
            self.peers.add(PeerKey::of(entry), entry.start_ns);
        }
    }

    /// Stops counting `entry`.
    pub fn remove(&mut self, entry: &SockEntry) {
        if self.built {
            self.processes.remove(ProcessKey::of(entry), entry.start_ns);
            self.peers.remove(PeerKey::of(entry), entry.start_ns);
        }
    }

    /// `old` became `new`: counted again where its owner, peer group or
    /// start changed.
    pub fn change(&mut self, old: &SockEntry, new: &SockEntry) {
        if !self.built {
            return;
        }
        let same_start = old.start_ns == new.start_ns;
        let (p0, p1) = (ProcessKey::of(old), ProcessKey::of(new));
        if !same_start || p0 != p1 {
            self.processes.remove(p0, old.start_ns);
            self.processes.add(p1, new.start_ns);
        }
        let (q0, q1) = (PeerKey::of(old), PeerKey::of(new));
        if !same_start || q0 != q1 {
            self.peers.remove(q0, old.start_ns);
            self.peers.add(q1, new.start_ns);
        }
    }

    /// Counts every one of `entries` (the first summary).
    pub fn build(&mut self, entries: impl Iterator<Item = SockEntry>) {
        self.processes.clear();
        self.peers.clear();
        self.built = true;
        let mut all: Vec<(ProcessKey, PeerKey, u64)> = entries
            .map(|e| (ProcessKey::of(&e), PeerKey::of(&e), e.start_ns))
            .collect();
        // In start order: every insert is an append.
        all.sort_unstable_by_key(|(_, _, start)| *start);
        for (p, q, start) in all {
            self.processes.add(p, start);
            self.peers.add(q, start);
        }
    }

    /// [`GroupIndex::settle_some`] for both kinds of group: `false` once
    /// every group is settled (or nothing is counted yet).
    pub fn settle_some(&mut self, budget: usize) -> bool {
        self.built && (self.processes.settle_some(budget) | self.peers.settle_some(budget))
    }

    /// Every group's numbers at `now_ns`.
    pub fn stats(
        &mut self,
        now_ns: u64,
        leak_after: Duration,
    ) -> (
        BTreeMap<ProcessKey, GroupStats>,
        BTreeMap<PeerKey, GroupStats>,
    ) {
        let to = frontier(now_ns, leak_after);
        self.processes.advance(to);
        self.peers.advance(to);
        (
            self.processes.stats(now_ns).collect(),
            self.peers.stats(now_ns).collect(),
        )
    }
}
