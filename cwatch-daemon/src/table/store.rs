/*!
How the table keeps a million sockets in little memory: one dense row of 48
bytes per socket ([`Row`]), an index of 4-byte row numbers by cookie
(hashbrown's `HashTable`, probing on the rows' own cookies), and everything
many sockets share interned once — peer addresses, owners, and where the
socket sits ([`Place`]: its local address, network namespace and cgroup,
which a host's sockets share by the handful). The rare socket held by
several fds keeps its holders aside. A [`SockEntry`] is made
from a row when asked for, and packed back into one.

A row keeps the socket inode in 32 bits: sockfs numbers its inodes with
`get_next_ino()`, an `unsigned int`.
*/
use std::{collections::HashMap, hash::Hash, net::IpAddr};

use hashbrown::HashTable;

use super::entry::{Direction, Holder, Owner, SockEntry};

/// An id that stands for nothing.
const NONE: u32 = u32::MAX;

const DIRECTION: u8 = 0b11;
const ESTIMATED: u8 = 1 << 2;
const RESOLVED: u8 = 1 << 3;
/// The row's owner is its one holder (with `fd`), not the hint.
const HELD: u8 = 1 << 4;
/// Several holders: they are in `Store::shared`.
const SHARED: u8 = 1 << 5;

/// Values many sockets share, stored once each with a count of users.
#[derive(Debug)]
struct Interner<T> {
    ids: HashMap<T, u32>,
    items: Vec<(T, u32)>,
    free: Vec<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> Interner<T> {
    fn intern(&mut self, value: T) -> u32 {
        if let Some(&id) = self.ids.get(&value) {
            self.items[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = (value, 1);
                id
            }
            None => {
                self.items.push((value, 1));
                (self.items.len() - 1) as u32
            }
        };
        self.ids.insert(value, id);
        id
    }

    fn release(&mut self, id: u32) {
        let Some(item) = self.items.get_mut(id as usize) else {
            return;
        };
        item.1 = item.1.saturating_sub(1);
        if item.1 == 0 {
            self.ids.remove(&item.0);
            self.free.push(id);
        }
    }

    fn get(&self, id: u32) -> T {
        self.items[id as usize].0
    }
}

/// Where a socket sits: its local address, network namespace and cgroup v2
/// id (0: unknown). A host has a handful of each, so one id stands for the
/// three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Place {
    local: IpAddr,
    netns: u32,
    cgroup: u64,
}

/// One socket, packed (48 bytes).
#[derive(Clone, Debug)]
struct Row {
    cookie: u64,
    start_ns: u64,
    inode: u32,
    /// A [`Place`].
    place: u32,
    /// The peer's address.
    peer: u32,
    /// The lowest-pid holder (with `HELD`), else `NONE`.
    owner: u32,
    hint: u32,
    fd: i32,
    local_port: u16,
    peer_port: u16,
    flags: u8,
}

// A million sockets' worth of rows is 48 MB: keep it from growing unseen.
const _: () = assert!(std::mem::size_of::<Row>() == 48);

/// The rows, their index, the interned values.
#[derive(Debug, Default)]
pub struct Store {
    rows: Vec<Row>,
    index: HashTable<u32>,
    places: Interner<Place>,
    ips: Interner<IpAddr>,
    owners: Interner<Owner>,
    /// Holders of sockets held by several fds.
    shared: HashMap<u64, Vec<Holder>>,
}

fn hash(cookie: u64) -> u64 {
    // Cookies are handed out in sequence: spread their bits.
    cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

impl Store {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    fn find(&self, cookie: u64) -> Option<usize> {
        let rows = &self.rows;
        self.index
            .find(hash(cookie), |&i| rows[i as usize].cookie == cookie)
            .map(|&i| i as usize)
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.find(cookie).is_some()
    }

    pub fn get(&self, cookie: u64) -> Option<SockEntry> {
        self.find(cookie).map(|i| self.unpack(&self.rows[i]))
    }

    /// When `cookie`'s CLOSE_WAIT started, without unpacking its row.
    pub fn start_of(&self, cookie: u64) -> Option<u64> {
        self.find(cookie).map(|i| self.rows[i].start_ns)
    }

    /// `cookie`'s socket inode, without unpacking its row.
    pub fn inode_of(&self, cookie: u64) -> Option<u64> {
        self.find(cookie).map(|i| u64::from(self.rows[i].inode))
    }

    /// Adds or replaces `entry`; returns the old one.
    pub fn insert(&mut self, entry: &SockEntry) -> Option<SockEntry> {
        let old = self.remove(entry.cookie);
        let row = self.pack(entry);
        if self.rows.len() == self.rows.capacity() {
            // Grow by a quarter, not by double: a million rows do not get
            // a second million's room.
            self.rows.reserve_exact(self.rows.len() / 4 + 64);
        }
        let i = self.rows.len() as u32;
        self.rows.push(row);
        let rows = &self.rows;
        self.index
            .insert_unique(hash(entry.cookie), i, |&j| hash(rows[j as usize].cookie));
        old
    }

    /// Room for `more` rows beyond those held (start-up, before it adds
    /// every socket found).
    pub fn reserve(&mut self, more: usize) {
        self.rows.reserve_exact(more);
        let rows = &self.rows;
        self.index.reserve(more, |&j| hash(rows[j as usize].cookie));
    }

    pub fn remove(&mut self, cookie: u64) -> Option<SockEntry> {
        let rows = &self.rows;
        let Ok(slot) = self
            .index
            .find_entry(hash(cookie), |&i| rows[i as usize].cookie == cookie)
        else {
            return None;
        };
        let (i, _) = slot.remove();
        let i = i as usize;
        let row = self.rows.swap_remove(i);
        if i < self.rows.len() {
            // The last row moved into `i`: point its index entry there.
            let moved = self.rows[i].cookie;
            let last = self.rows.len() as u32;
            if let Some(at) = self.index.find_mut(hash(moved), |&j| j == last) {
                *at = i as u32;
            }
        }
        let entry = self.unpack(&row);
        self.release(&row);
        self.shrink();
        Some(entry)
    }

    /// Gives back memory once most rows are gone.
    fn shrink(&mut self) {
        let len = self.rows.len();
        if self.rows.capacity() > 4096 && self.rows.capacity() > 4 * len {
            self.rows.shrink_to(2 * len);
            let rows = &self.rows;
            self.index
                .shrink_to(2 * len, |&j| hash(rows[j as usize].cookie));
            self.shared.shrink_to(2 * self.shared.len());
        }
    }

    /// Changes `cookie`'s entry with `f`; returns (old, new) when it exists.
    pub fn update(
        &mut self,
        cookie: u64,
        f: impl FnOnce(&mut SockEntry),
    ) -> Option<(SockEntry, SockEntry)> {
        let i = self.find(cookie)?;
        let old = self.unpack(&self.rows[i]);
        let mut new = old.clone();
        f(&mut new);
        new.cookie = cookie;
        // Let go of the old row's values first: packing the new one may
        // take the same (its shared holders under the same cookie).
        let previous = self.rows[i].clone();
        self.release(&previous);
        self.rows[i] = self.pack(&new);
        Some((old, new))
    }

    /// Every entry, unpacked.
    pub fn iter(&self) -> impl Iterator<Item = SockEntry> + '_ {
        self.rows.iter().map(|r| self.unpack(r))
    }

    pub fn cookies(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|r| r.cookie)
    }

    /// (cookie, socket inode, start) of every row, without unpacking.
    pub fn inodes(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.rows
            .iter()
            .map(|r| (r.cookie, u64::from(r.inode), r.start_ns))
    }

    /// (cookie, start, netns) of every row, without unpacking.
    pub fn keys(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.rows
            .iter()
            .map(|r| (r.cookie, r.start_ns, self.places.get(r.place).netns))
    }

    fn pack(&mut self, e: &SockEntry) -> Row {
        let direction = match e.direction {
            Direction::Outbound => 0,
            Direction::Inbound => 1,
            Direction::Unaccepted => 2,
        };
        let mut flags = direction;
        if e.age_estimated {
            flags |= ESTIMATED;
        }
        if e.resolved {
            flags |= RESOLVED;
        }
        let (owner, fd) = match e.holders.first() {
            Some(h) => {
                flags |= HELD;
                (
                    self.owners.intern(Owner {
                        pid: h.pid,
                        comm: h.comm,
                    }),
                    h.fd,
                )
            }
            None => (NONE, -1),
        };
        if e.holders.len() > 1 {
            flags |= SHARED;
            self.shared.insert(e.cookie, e.holders.clone());
        }
        Row {
            cookie: e.cookie,
            start_ns: e.start_ns,
            inode: u32::try_from(e.inode).unwrap_or(0),
            place: self.places.intern(Place {
                local: e.local.ip(),
                netns: e.netns,
                cgroup: e.cgroup,
            }),
            peer: self.ips.intern(e.peer.ip()),
            owner,
            hint: e.hint.map_or(NONE, |h| self.owners.intern(h)),
            fd,
            local_port: e.local.port(),
            peer_port: e.peer.port(),
            flags,
        }
    }

    /// Lets go of what `row` interned.
    fn release(&mut self, row: &Row) {
        self.places.release(row.place);
        self.ips.release(row.peer);
        for id in [row.owner, row.hint] {
            if id != NONE {
                self.owners.release(id);
            }
        }
        if row.flags & SHARED != 0 {
            self.shared.remove(&row.cookie);
        }
    }

    fn unpack(&self, r: &Row) -> SockEntry {
        let place = self.places.get(r.place);
        let owner = |id: u32| (id != NONE).then(|| self.owners.get(id));
        let hint = owner(r.hint);
        let holders = if r.flags & SHARED != 0 {
            self.shared.get(&r.cookie).cloned().unwrap_or_default()
        } else if r.flags & HELD != 0 {
            owner(r.owner)
                .map(|o| Holder {
                    pid: o.pid,
                    fd: r.fd,
                    comm: o.comm,
                })
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        let direction = match r.flags & DIRECTION {
            0 => Direction::Outbound,
            1 => Direction::Inbound,
            _ => Direction::Unaccepted,
        };
        let lowest = holders.first().map(|h| Owner {
            pid: h.pid,
            comm: h.comm,
        });
        SockEntry {
            cookie: r.cookie,
            start_ns: r.start_ns,
            age_estimated: r.flags & ESTIMATED != 0,
            local: std::net::SocketAddr::new(place.local, r.local_port),
            peer: std::net::SocketAddr::new(self.ips.get(r.peer), r.peer_port),
            netns: place.netns,
            inode: u64::from(r.inode),
            cgroup: place.cgroup,
            direction,
            hint,
            owner: lowest.or(hint),
            holders,
            resolved: r.flags & RESOLVED != 0,
        }
    }
}
