/*!
The socket table's live gauges: every CLOSE_WAIT socket counted in its
process group and its peer group ([`GroupIndex`]), and what each socket was
counted under, so that the table keeps them exact as sockets come, go and
change owner. Entries handed out mutably (`get_mut`, `iter_mut`) may have
changed behind the table's back: they are marked and checked again before
the next summary.
*/
use std::{collections::BTreeMap, time::Duration};

use crate::{
    aging::{GroupStats, PeerKey, ProcessKey},
    groups::{GroupIndex, frontier},
    table::SockEntry,
};

/// The groups (and start) a socket is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    process: u32,
    peer: u32,
    start: u64,
}

/// Sockets handed out mutably since the last summary.
#[derive(Debug, Default)]
enum Touched {
    #[default]
    None,
    Some(Vec<u64>),
    All,
}

/// Per-process and per-peer groups of the sockets in CLOSE_WAIT.
#[derive(Debug, Default)]
pub struct Gauges {
    processes: GroupIndex<ProcessKey>,
    peers: GroupIndex<PeerKey>,
    touched: Touched,
}

/// Beyond this many marked sockets (and a quarter of the table), checking
/// them all is as cheap as keeping the list.
const TOUCHED_LIST: usize = 4096;

impl Gauges {
    /// Counts `entry`; returns what it was counted under.
    pub fn add(&mut self, entry: &SockEntry) -> Counted {
        Counted {
            process: self
                .processes
                .add(ProcessKey::of(entry), entry.start_ns, entry.cookie),
            peer: self
                .peers
                .add(PeerKey::of(entry), entry.start_ns, entry.cookie),
            start: entry.start_ns,
        }
    }

    /// Stops counting socket `cookie`, counted as `counted`.
    pub fn remove(&mut self, counted: Counted, cookie: u64) {
        self.processes
            .remove(counted.process, counted.start, cookie);
        self.peers.remove(counted.peer, counted.start, cookie);
    }

    /// Counts `entry` again if its owner, peer group or start changed since
    /// it was counted as `counted`.
    pub fn recount(&mut self, entry: &SockEntry, counted: &mut Counted) {
        let same = counted.start == entry.start_ns
            && self.processes.key(counted.process) == Some(ProcessKey::of(entry))
            && self.peers.key(counted.peer) == Some(PeerKey::of(entry));
        if !same {
            self.remove(*counted, entry.cookie);
            *counted = self.add(entry);
        }
    }

    /// Socket `cookie` was handed out mutably (the table has `len` sockets).
    pub fn touch(&mut self, cookie: u64, len: usize) {
        match &mut self.touched {
            Touched::All => {}
            Touched::Some(list) if list.len() >= TOUCHED_LIST.max(len / 4) => {
                self.touched = Touched::All;
            }
            Touched::Some(list) => list.push(cookie),
            Touched::None => self.touched = Touched::Some(vec![cookie]),
        }
    }

    /// Every socket may have changed.
    pub fn touch_all(&mut self) {
        self.touched = Touched::All;
    }

    /// The sockets to check again: `None` for all of them.
    pub fn take_touched(&mut self) -> Option<Vec<u64>> {
        match std::mem::take(&mut self.touched) {
            Touched::None => Some(Vec::new()),
            Touched::Some(list) => Some(list),
            Touched::All => None,
        }
    }

    /// Every group's numbers at `now_ns` (call after checking the touched
    /// sockets again).
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
