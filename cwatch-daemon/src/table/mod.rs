/*!
The socket table: every socket cwatch knows to be in CLOSE_WAIT, keyed by the
kernel's socket cookie, and the dead sockets (closed by the kernel while a
process still holds the fd). Pure data and logic, no I/O: intake,
attribution and reconciliation change it, metrics and the API read it.

Inside, from the bottom up: [`entry`] (one socket), [`keys`] (what the
gauges group by and count), [`store`] (the sockets packed into dense rows
with an index by cookie: about 58 bytes a socket), [`groups`] (per-group
ordered starts), [`gauges`] (every socket counted in its groups, kept exact
as it changes), and the table itself here. Entries come out of the store as
values and go back through the table, so the gauges see every change.
*/
mod entry;
mod gauges;
mod groups;
mod keys;
mod store;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

pub use entry::{Comm, DeadEntry, Direction, Holder, SockEntry};
use gauges::Gauges;
pub use keys::{GroupStats, PeerKey, ProcessKey, Summary, age, is_leaked};
use store::Store;

/// Sets that shrink once mostly empty: a million sockets closed at once do
/// not keep their memory.
fn shrink_if_sparse<T: std::hash::Hash + Eq>(set: &mut HashSet<T>) {
    if set.capacity() > 4096 && set.capacity() > 4 * set.len() {
        set.shrink_to(2 * set.len());
    }
}

/// All sockets now in CLOSE_WAIT, by cookie, and the dead ones still held,
/// with the per-process and per-peer gauges kept up to date as they change.
#[derive(Debug, Default)]
pub struct SocketTable {
    store: Store,
    dead: HashMap<u64, DeadEntry>,
    /// Cookies of entries whose holders were never looked up, and of dead
    /// entries not verified yet: attribution visits only these, never the
    /// whole table.
    unresolved: HashSet<u64>,
    unverified: HashSet<u64>,
    /// Cookies the young scanner is reporting: tracked, their record not
    /// yet moved or their socket not yet checked. Reconciliation leaves them
    /// to it (a socket that left meanwhile is the scanner's to drop, not
    /// drift).
    reporting: HashSet<u64>,
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
        let old = self.store.insert(&entry);
        if let Some(old) = &old {
            self.gauges.remove(old);
        }
        self.gauges.add(&entry);
        old
    }

    /// Room for `more` sockets beyond those held.
    pub fn reserve(&mut self, more: usize) {
        self.store.reserve(more);
    }

    pub fn remove(&mut self, cookie: u64) -> Option<SockEntry> {
        self.unresolved.remove(&cookie);
        shrink_if_sparse(&mut self.unresolved);
        let entry = self.store.remove(cookie)?;
        self.gauges.remove(&entry);
        Some(entry)
    }

    /// Changes the entry of `cookie` with `f` (the gauges follow); `false`
    /// when there is none.
    pub fn update(&mut self, cookie: u64, f: impl FnOnce(&mut SockEntry)) -> bool {
        match self.store.update(cookie, f) {
            Some((old, new)) => {
                self.gauges.change(&old, &new);
                if !new.resolved {
                    self.unresolved.insert(cookie);
                }
                true
            }
            None => false,
        }
    }

    /// Sets the holders of `cookie` (see [`SockEntry::set_holders`]).
    pub fn set_holders(&mut self, cookie: u64, holders: Vec<Holder>) -> bool {
        self.unresolved.remove(&cookie);
        shrink_if_sparse(&mut self.unresolved);
        self.update(cookie, |e| e.set_holders(holders))
    }

    /// `cookie` needs its holders looked up (again).
    pub fn mark_unresolved(&mut self, cookie: u64) {
        self.update(cookie, |e| e.resolved = false);
    }

    /// Entries whose holders were never looked up.
    pub fn unresolved(&self) -> impl Iterator<Item = SockEntry> + '_ {
        self.unresolved.iter().filter_map(|c| self.store.get(*c))
    }

    /// The socket inodes of [`SocketTable::unresolved`], without unpacking
    /// the rows (a walk at start-up asks for a million of them).
    pub fn unresolved_inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.unresolved
            .iter()
            .filter_map(|c| self.store.inode_of(*c))
    }

    /// Whether some entry waits for its holders.
    pub fn has_unresolved(&self) -> bool {
        !self.unresolved.is_empty()
    }

    /// The young scanner starts reporting `cookies` (see `reporting`).
    pub fn start_reporting(&mut self, cookies: impl IntoIterator<Item = u64>) {
        self.reporting.extend(cookies);
    }

    /// The young scanner is done with `cookies`: kept or removed.
    pub fn done_reporting(&mut self, cookies: impl IntoIterator<Item = u64>) {
        for cookie in cookies {
            self.reporting.remove(&cookie);
        }
        shrink_if_sparse(&mut self.reporting);
    }

    /// Whether the young scanner is reporting `cookie` right now.
    pub fn is_reporting(&self, cookie: u64) -> bool {
        self.reporting.contains(&cookie)
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

    pub fn get(&self, cookie: u64) -> Option<SockEntry> {
        self.store.get(cookie)
    }

    /// When `cookie`'s CLOSE_WAIT started, if it is tracked (live).
    pub fn start_of(&self, cookie: u64) -> Option<u64> {
        self.store.start_of(cookie)
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.store.contains(cookie)
    }

    /// `cookie`'s socket inode (0: not accepted yet), if it is tracked.
    pub fn inode_of(&self, cookie: u64) -> Option<u64> {
        self.store.inode_of(cookie)
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
        shrink_if_sparse(&mut self.unverified);
        let dead = self.dead.remove(&cookie);
        if self.dead.capacity() > 4096 && self.dead.capacity() > 4 * self.dead.len() {
            self.dead.shrink_to(2 * self.dead.len());
        }
        dead
    }

    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// Every entry (made from its row: a value, not a reference).
    pub fn iter(&self) -> impl Iterator<Item = SockEntry> + '_ {
        self.store.iter()
    }

    pub fn cookies(&self) -> impl Iterator<Item = u64> + '_ {
        self.store.cookies()
    }

    /// (cookie, socket inode, start) of every entry, cheaply (a walk of
    /// `/proc` asks for a million under the lock).
    pub fn inodes(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.store.inodes()
    }

    /// (cookie, start, netns) of every entry, cheaply.
    pub fn keys(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.store.keys()
    }

    /// Entries sorted oldest first (ties broken by cookie, so the order is
    /// stable from one call to the next).
    #[cfg(test)]
    pub fn oldest_first(&self) -> Vec<SockEntry> {
        let mut all: Vec<SockEntry> = self.iter().collect();
        all.sort_unstable_by_key(|e| (e.start_ns, e.cookie));
        all
    }

    /// Sorts some of the groups that sockets were moved into out of order
    /// (about `budget` sockets' worth); `false` once none is left.
    pub fn settle_gauges(&mut self, budget: usize) -> bool {
        self.gauges.settle_some(budget)
    }

    /// The gauges at `now_ns`: per process and per peer from the groups
    /// kept up to date (no walk of the sockets), dead sockets held by
    /// holding process. Equal to [`SocketTable::summarize_where`] keeping
    /// every socket.
    pub fn summary(&mut self, now_ns: u64, leak_after: Duration) -> Summary {
        if !self.gauges.is_built() {
            self.gauges.build(self.store.iter());
        }
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
            let entry = &entry;
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
