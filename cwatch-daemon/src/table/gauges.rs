/*!
The socket table's live gauges: every CLOSE_WAIT socket counted in its
process group and its peer group ([`GroupIndex`]), and what each socket was
counted under, so that the table keeps them exact as sockets come, go and
change owner. Entries handed out mutably (`get_mut`, `iter_mut`) may have
changed behind the table's back: they are marked and checked again before
the next summary.
*/
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::Hash,
    time::Duration,
};

use super::{
    entry::SockEntry,
    groups::{GroupIndex, frontier},
    keys::{GroupStats, PeerKey, ProcessKey},
};

/// A socket in the table and the groups its gauges count it under.
#[derive(Debug)]
pub struct Slot {
    pub entry: SockEntry,
    pub counted: Counted,
}

/// The table's maps and sets: their capacity at most [`SHRINK_FACTOR`]
/// times their length (beyond [`SHRINK_MIN`]), so that a million sockets
/// closed at once do not keep their memory.
pub trait Shrink {
    fn shrink_if_sparse(&mut self);
}

const SHRINK_FACTOR: usize = 4;
const SHRINK_MIN: usize = 4096;

impl<K: Hash + Eq, V> Shrink for HashMap<K, V> {
    fn shrink_if_sparse(&mut self) {
        if self.capacity() > SHRINK_MIN && self.capacity() > SHRINK_FACTOR * self.len() {
            self.shrink_to(2 * self.len());
        }
    }
}

impl<K: Hash + Eq> Shrink for HashSet<K> {
    fn shrink_if_sparse(&mut self) {
        if self.capacity() > SHRINK_MIN && self.capacity() > SHRINK_FACTOR * self.len() {
            self.shrink_to(2 * self.len());
        }
    }
}

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
    /// The groups are built at the first summary: start-up fills the table
    /// with every socket and then moves most of them to their holders, and
    /// counting every move would cost more than counting once.
    built: bool,
}

/// Beyond this many marked sockets (and a quarter of the table), checking
/// them all is as cheap as keeping the list.
const TOUCHED_LIST: usize = 4096;

impl Gauges {
    /// Counts `entry`; returns what it was counted under.
    pub fn add(&mut self, entry: &SockEntry) -> Counted {
        if !self.built {
            return Counted {
                process: u32::MAX,
                peer: u32::MAX,
                start: entry.start_ns,
            };
        }
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
        if !self.built {
            return;
        }
        self.processes
            .remove(counted.process, counted.start, cookie);
        self.peers.remove(counted.peer, counted.start, cookie);
    }

    /// Counts `entry` again if its owner, peer group or start changed since
    /// it was counted as `counted`.
    pub fn recount(&mut self, entry: &SockEntry, counted: &mut Counted) {
        let same = !self.built
            || counted.start == entry.start_ns
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

    /// Counts again the sockets of `socks` handed out mutably since the
    /// last call.
    pub fn recount_touched(&mut self, socks: &mut HashMap<u64, Slot>) {
        if !self.built {
            self.built = true;
            self.touched = Touched::None;
            for slot in socks.values_mut() {
                slot.counted = self.add(&slot.entry);
            }
            return;
        }
        match std::mem::take(&mut self.touched) {
            Touched::None => {}
            Touched::Some(cookies) => {
                for cookie in cookies {
                    if let Some(slot) = socks.get_mut(&cookie) {
                        self.recount(&slot.entry, &mut slot.counted);
                    }
                }
            }
            Touched::All => {
                for slot in socks.values_mut() {
                    self.recount(&slot.entry, &mut slot.counted);
                }
            }
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
