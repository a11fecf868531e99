/*!
The socket table: every socket cwatch knows to be in CLOSE_WAIT, keyed by the
kernel's socket cookie, and the dead sockets (closed by the kernel while a
process still holds the fd). Pure data and logic, no I/O: intake,
attribution and reconciliation change it, metrics and the API read it.

Inside, from the bottom up: [`entry`] (one socket), [`keys`] (what the
gauges group by and count), [`groups`] (per-group ordered starts),
[`gauges`] (every socket counted in its groups, kept exact as it changes),
and the table itself here.
*/
mod entry;
mod gauges;
mod groups;
mod keys;

use std::{
    collections::{BTreeMap, HashMap, HashSet, hash_map},
    time::Duration,
};

pub use entry::{Comm, DeadEntry, Direction, Holder, SockEntry};
use gauges::{Gauges, Shrink as _, Slot};
pub use keys::{GroupStats, PeerKey, ProcessKey, Summary, age, is_leaked};

/// All sockets now in CLOSE_WAIT, by cookie, and the dead ones still held,
/// with the per-process and per-peer gauges kept up to date as they change.
#[derive(Debug, Default)]
pub struct SocketTable {
    socks: HashMap<u64, Slot>,
    dead: HashMap<u64, DeadEntry>,
    /// Cookies of entries whose holders were never looked up, and of dead
    /// entries not verified yet: attribution visits only these, never the
    /// whole table.
    unresolved: HashSet<u64>,
    unverified: HashSet<u64>,
    gauges: Gauges,
}

impl SocketTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the entry for `entry.cookie`; returns the old one.
    pub fn insert(&mut self, entry: SockEntry) -> Option<SockEntry> {
        if entry.resolved {
            self.unresolved.remove(&entry.cookie);
        } else {
            self.unresolved.insert(entry.cookie);
        }
        match self.socks.entry(entry.cookie) {
            hash_map::Entry::Occupied(mut slot) => {
                // Uncount the old one first: it may sit in the same groups.
                self.gauges.remove(slot.get().counted, entry.cookie);
                let counted = self.gauges.add(&entry);
                let old = std::mem::replace(slot.get_mut(), Slot { entry, counted });
                Some(old.entry)
            }
            hash_map::Entry::Vacant(slot) => {
                let counted = self.gauges.add(&entry);
                slot.insert(Slot { entry, counted });
                None
            }
        }
    }

    pub fn remove(&mut self, cookie: u64) -> Option<SockEntry> {
        self.unresolved.remove(&cookie);
        self.unresolved.shrink_if_sparse();
        let slot = self.socks.remove(&cookie)?;
        self.gauges.remove(slot.counted, cookie);
        self.socks.shrink_if_sparse();
        Some(slot.entry)
    }

    /// Sets the holders of `cookie` (see [`SockEntry::set_holders`]).
    pub fn set_holders(&mut self, cookie: u64, holders: Vec<Holder>) -> bool {
        self.unresolved.remove(&cookie);
        self.unresolved.shrink_if_sparse();
        match self.socks.get_mut(&cookie) {
            Some(slot) => {
                slot.entry.set_holders(holders);
                self.gauges.recount(&slot.entry, &mut slot.counted);
                true
            }
            None => false,
        }
    }

    /// `cookie` needs its holders looked up (again).
    pub fn mark_unresolved(&mut self, cookie: u64) {
        if let Some(Slot { entry, .. }) = self.socks.get_mut(&cookie) {
            entry.resolved = false;
            self.unresolved.insert(cookie);
        }
    }

    /// Entries whose holders were never looked up.
    pub fn unresolved(&self) -> impl Iterator<Item = &SockEntry> {
        self.unresolved.iter().filter_map(|c| self.get(*c))
    }

    /// Dead entries not verified yet.
    pub fn unverified(&self) -> impl Iterator<Item = &DeadEntry> {
        self.unverified.iter().filter_map(|c| self.dead.get(c))
    }

    /// A dead socket an fd still holds: verified, with these holders.
    pub fn verify_dead(&mut self, cookie: u64, holders: Vec<Holder>) {
        self.unverified.remove(&cookie);
        if let Some(dead) = self.dead.get_mut(&cookie) {
            dead.sock.set_holders(holders);
            dead.verified = true;
        }
    }

    pub fn get(&self, cookie: u64) -> Option<&SockEntry> {
        self.socks.get(&cookie).map(|s| &s.entry)
    }

    /// The entry of `cookie`, to change; the gauges check it again before
    /// the next [`SocketTable::summary`].
    pub fn get_mut(&mut self, cookie: u64) -> Option<&mut SockEntry> {
        let len = self.socks.len();
        let slot = self.socks.get_mut(&cookie)?;
        self.gauges.touch(cookie, len);
        Some(&mut slot.entry)
    }

    /// Every entry, to change; the gauges check them all again before the
    /// next [`SocketTable::summary`].
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut SockEntry> {
        self.gauges.touch_all();
        self.socks.values_mut().map(|s| &mut s.entry)
    }

    /// Dead sockets: left CLOSE_WAIT, not destroyed yet.
    pub fn dead(&self) -> impl Iterator<Item = &DeadEntry> {
        self.dead.values()
    }

    pub fn dead_mut(&mut self) -> impl Iterator<Item = &mut DeadEntry> {
        self.dead.values_mut()
    }

    /// The dead entry of `cookie`.
    pub fn dead_entry(&self, cookie: u64) -> Option<&DeadEntry> {
        self.dead.get(&cookie)
    }

    pub fn insert_dead(&mut self, entry: DeadEntry) {
        if !entry.verified {
            self.unverified.insert(entry.sock.cookie);
        }
        self.dead.insert(entry.sock.cookie, entry);
    }

    pub fn remove_dead(&mut self, cookie: u64) -> Option<DeadEntry> {
        self.unverified.remove(&cookie);
        self.unverified.shrink_if_sparse();
        let dead = self.dead.remove(&cookie);
        self.dead.shrink_if_sparse();
        dead
    }

    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SockEntry> {
        self.socks.values().map(|s| &s.entry)
    }

    pub fn cookies(&self) -> impl Iterator<Item = u64> + '_ {
        self.socks.keys().copied()
    }

    /// Entries sorted oldest first (ties broken by cookie, so the order is
    /// stable from one call to the next).
    pub fn oldest_first(&self) -> Vec<&SockEntry> {
        let mut all: Vec<&SockEntry> = self.iter().collect();
        all.sort_unstable_by_key(|e| (e.start_ns, e.cookie));
        all
    }

    /// The gauges at `now_ns`: per process and per peer from the groups
    /// kept up to date (no walk of the sockets), dead sockets held by
    /// holding process. Equal to [`SocketTable::summarize_where`] keeping every socket.
    pub fn summary(&mut self, now_ns: u64, leak_after: Duration) -> Summary {
        self.gauges.recount_touched(&mut self.socks);
        let (processes, peers) = self.gauges.stats(now_ns, leak_after);
        let mut dead = BTreeMap::new();
        for d in self.dead.values().filter(|d| d.verified) {
            *dead.entry(ProcessKey::of(&d.sock)).or_default() += 1;
        }
        Summary {
            processes,
            peers,
            dead,
        }
    }

    /// [`SocketTable::summary`] of the sockets (live and dead) that `keep`
    /// keeps, by a walk of every socket (for filters, which the groups do
    /// not know).
    pub fn summarize_where(
        &self,
        now_ns: u64,
        leak_after: Duration,
        mut keep: impl FnMut(&SockEntry) -> bool,
    ) -> Summary {
        let mut summary = Summary::default();
        for entry in self.iter().filter(|e| keep(e)) {
            let age = age(now_ns, entry.start_ns);
            summary
                .processes
                .entry(ProcessKey::of(entry))
                .or_default()
                .add(age, leak_after);
            summary
                .peers
                .entry(PeerKey::of(entry))
                .or_default()
                .add(age, leak_after);
        }
        for dead in self.dead().filter(|d| d.verified && keep(&d.sock)) {
            *summary.dead.entry(ProcessKey::of(&dead.sock)).or_default() += 1;
        }
        summary
    }
}

#[cfg(test)]
pub(crate) mod tests;
