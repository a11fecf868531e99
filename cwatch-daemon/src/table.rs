/*!
The socket table: every socket cwatch knows to be in CLOSE_WAIT, keyed by the
kernel's socket cookie, and the dead sockets (closed by the kernel while a
process still holds the fd). Pure data and logic, no I/O: intake,
attribution and reconciliation change it, metrics and the API read it.
*/
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet, hash_map},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use cwatch_common::{AF_INET, AF_INET6, REC_OUTBOUND, REC_UNACCEPTED, SockRecord, TASK_COMM_LEN};

use crate::{
    aging::{ProcessKey, Summary},
    gauges::{Gauges, Shrink as _, Slot},
};

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// We connect()ed to the peer.
    Outbound,
    /// The peer connected to one of our listeners and we accepted it.
    Inbound,
    /// Still in a listener's accept queue: nobody ever called accept().
    Unaccepted,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Unaccepted => "unaccepted",
        }
    }
}

/// A process name as the kernel keeps it: up to 15 bytes, NUL padded. Kept
/// inline so a million sockets do not mean a million small allocations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm([u8; TASK_COMM_LEN]);

impl Comm {
    pub fn from_bytes(bytes: [u8; TASK_COMM_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_str(&self) -> Cow<'_, str> {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        String::from_utf8_lossy(&self.0[..len])
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The process holding a socket: thread-group id in the host pid namespace
/// and the group leader's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
}

/// A process holding a socket through one of its fds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    pub fd: i32,
    pub comm: Comm,
}

/// One socket in CLOSE_WAIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEntry {
    pub cookie: u64,
    /// CLOCK_BOOTTIME ns of the transition into CLOSE_WAIT.
    pub start_ns: u64,
    /// The start was not seen, only estimated.
    pub age_estimated: bool,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub netns: u32,
    /// Socket inode (`socket:[N]`); 0 while unaccepted.
    pub inode: u64,
    pub direction: Direction,
    /// The process the kernel saw connect() or listen(): right at once for
    /// outbound sockets, the listener for inbound ones; used until the fd
    /// holders are known, and when no fd holds the socket.
    pub hint: Option<Owner>,
    /// Every (process, fd) holding the socket, sorted by pid then fd.
    pub holders: Vec<Holder>,
    /// Holders were looked up at least once since the last change.
    pub resolved: bool,
    /// Who the gauges count it under: the lowest-pid holder, else the hint.
    pub owner: Option<Owner>,
}

impl SockEntry {
    /// The entry for a kernel record. IPv4-mapped IPv6 addresses become IPv4.
    pub fn from_record(rec: &SockRecord) -> Self {
        let hint = (rec.owner_tgid != 0).then(|| Owner {
            pid: rec.owner_tgid,
            comm: Comm::from_bytes(rec.owner_comm),
        });
        let direction = if rec.flags & REC_OUTBOUND != 0 {
            Direction::Outbound
        } else if rec.flags & REC_UNACCEPTED != 0 {
            Direction::Unaccepted
        } else {
            // REC_INBOUND (its listener is known), or a socket whose owner
            // the kernel never saw because it predates cwatch.
            Direction::Inbound
        };
        Self {
            cookie: rec.cookie,
            start_ns: rec.start_ns,
            age_estimated: false,
            local: SocketAddr::new(ip(rec.family, &rec.local_addr), rec.local_port),
            peer: SocketAddr::new(ip(rec.family, &rec.peer_addr), rec.peer_port),
            netns: rec.netns,
            inode: rec.inode,
            direction,
            hint,
            holders: Vec::new(),
            resolved: false,
            owner: hint,
        }
    }

    /// Replaces the holders (sorted, deduplicated) and recomputes the owner.
    pub fn set_holders(&mut self, mut holders: Vec<Holder>) {
        holders.sort_unstable();
        holders.dedup();
        holders.shrink_to_fit();
        self.holders = holders;
        self.resolved = true;
        self.owner = self
            .holders
            .first()
            .map(|h| Owner {
                pid: h.pid,
                comm: h.comm,
            })
            .or(self.hint);
    }

    /// The fd of the owner, when a holder is known.
    pub fn owner_fd(&self) -> Option<i32> {
        let owner = self.owner?;
        self.holders
            .iter()
            .find(|h| h.pid == owner.pid)
            .map(|h| h.fd)
    }
}

/// A socket that left CLOSE_WAIT (the kernel closed it, or it was shut down
/// without close()) while a process may still hold its fd. Kept until the
/// kernel destroys it (`tcp_destroy_sock`), i.e. until the last fd is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadEntry {
    pub sock: SockEntry,
    /// CLOCK_BOOTTIME ns when it left CLOSE_WAIT.
    pub left_ns: u64,
    /// The state it left CLOSE_WAIT for (LAST_ACK or CLOSE).
    pub newstate: u16,
    /// The holders were checked after it left: it is a leaked fd, not a
    /// socket on its way to a normal close.
    pub verified: bool,
}

impl DeadEntry {
    /// `sock` left CLOSE_WAIT for `newstate` at `left_ns`; not verified yet.
    pub fn left(sock: SockEntry, left_ns: u64, newstate: u16) -> Self {
        Self {
            sock,
            left_ns,
            newstate,
            verified: false,
        }
    }
}

/// An address as users read it: IPv4, or IPv6 unless it is IPv4-mapped.
/// An unknown family (the kernel read failed) shows as 0.0.0.0.
fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

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

    pub fn get_dead_mut(&mut self, cookie: u64) -> Option<&mut DeadEntry> {
        self.dead.get_mut(&cookie)
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
    /// holding process. Equal to [`crate::aging::summarize`].
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
}

#[cfg(test)]
#[path = "table_tests.rs"]
pub(crate) mod tests;
