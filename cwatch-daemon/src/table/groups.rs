/*!
Per-group gauge numbers kept up to date as sockets come and go, so that a
scrape costs the number of groups, not the number of sockets.

A [`GroupIndex`] keeps, for each group key (a process, a peer), the start
times of its sockets in order ([`Starts`]: eight bytes a socket). The count
is their number, the oldest age is `now - first`, and the leaked count
(start at or before `now - leak-after`) is kept against a frontier that only
moves forward with the clock: moving it counts the starts it passes, once.

A socket leaving marks its start (the top bit) instead of moving the rest;
the marks are swept out once they are half of a group. Among equal starts
the marked ones come first, so finding one to mark is a binary search (a
restart's estimated starts collide by the thousand). New sockets have the
newest starts, so they are added at the end; a start older than the last
few is added at the end too and the group is sorted again when next read
(start-up and the /proc walk move a million sockets between groups in any
order: one sort each, not a shift of the rest per socket).
*/
use std::{collections::HashMap, hash::Hash, time::Duration};

use super::keys::{GroupStats, age};

/// A start that left (its socket is no longer in the group).
const MARK: u64 = 1 << 63;

/// A start this close to the end is put in its place at once; one further
/// back waits at the end until the group is next sorted.
const NEAR_END: usize = 64;

/// Where the leak line is: sockets that started at or before it are leaked.
/// `None` is before every start (nothing is leaked yet).
pub type Frontier = Option<u64>;

/// The frontier for `now_ns` and `leak_after`: a socket is leaked when
/// `now - start >= leak_after` (ages never go below zero, so with a zero
/// leak-after every socket is).
pub fn frontier(now_ns: u64, leak_after: Duration) -> Frontier {
    let leak_ns = u64::try_from(leak_after.as_nanos()).unwrap_or(u64::MAX);
    if leak_ns == 0 {
        return Some(u64::MAX);
    }
    now_ns.checked_sub(leak_ns)
}

fn at_or_before(start: u64, frontier: Frontier) -> bool {
    frontier.is_some_and(|f| start <= f)
}

/// The start times of one group's sockets, in order, with the marks of
/// those that left.
#[derive(Debug, Default)]
pub struct Starts {
    v: Vec<u64>,
    marked: usize,
    /// `v[..below]` are the starts at or before the frontier, marked or not.
    below: usize,
    /// Of those, the unmarked ones: the leaked count.
    leaked: u64,
    /// Index of the first unmarked start.
    head: usize,
    /// Starts were added out of order at the end since the last sort:
    /// `below`, `leaked` and `head` wait for [`Starts::settle`].
    unsorted: bool,
}

impl Starts {
    pub fn len(&self) -> usize {
        self.v.len() - self.marked
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest start.
    pub fn first(&self) -> Option<u64> {
        self.v.get(self.head).map(|s| s & !MARK)
    }

    /// Index of the first element whose start is above `start`.
    fn after(&self, start: u64) -> usize {
        self.v.partition_point(|s| s & !MARK <= start)
    }

    /// Index of the first element whose start is beyond `frontier`.
    fn up_to(&self, frontier: Frontier) -> usize {
        frontier.map_or(0, |f| self.after(f))
    }

    fn insert(&mut self, start: u64, frontier: Frontier) {
        let start = start & !MARK;
        if self.v.len() == self.v.capacity() {
            self.v.reserve_exact(self.v.len() / 4 + 8);
        }
        if self.unsorted {
            self.v.push(start);
            return;
        }
        let at = match self.v.last() {
            Some(last) if last & !MARK <= start => self.v.len(),
            _ => self.after(start),
        };
        if self.v.len() - at > NEAR_END {
            self.v.push(start);
            self.unsorted = true;
            return;
        }
        self.v.insert(at, start);
        if at_or_before(start, frontier) {
            self.below += 1;
            self.leaked += 1;
        }
        // An unmarked start at or before the head is the new head; one
        // after it leaves the head where it is.
        if at <= self.head {
            self.head = at;
        }
    }

    /// Sorts the starts added out of order (swept first: the marks go) and
    /// counts again against `frontier` (what the sweep kept of the counts
    /// held only for sorted starts).
    fn settle(&mut self, frontier: Frontier) {
        if !self.unsorted {
            return;
        }
        self.sweep();
        // Stable and adaptive: the sorted part is one run, merged with the
        // sorted tail.
        self.v.sort();
        self.below = self.up_to(frontier);
        self.leaked = self.below as u64;
        self.unsorted = false;
    }

    /// Marks one socket started at `start`; `false` when there is none.
    /// Settled first.
    fn remove(&mut self, start: u64, frontier: Frontier) -> bool {
        self.settle(frontier);
        let from = self.v.partition_point(|s| s & !MARK < start);
        let to = from + self.v[from..].partition_point(|s| s & !MARK == start);
        // The marked ones of a run of equal starts come first.
        let at = from + self.v[from..to].partition_point(|s| s & MARK != 0);
        if at == to {
            return false;
        }
        self.v[at] |= MARK;
        self.marked += 1;
        if at < self.below {
            self.leaked -= 1;
        }
        self.fix_head();
        if self.marked * 2 > self.v.len() && self.v.len() > 16 {
            self.sweep();
        }
        true
    }

    fn fix_head(&mut self) {
        while self.head < self.v.len() && self.v[self.head] & MARK != 0 {
            self.head += 1;
        }
    }

    /// Drops the marked starts.
    fn sweep(&mut self) {
        let below_unmarked = self.leaked as usize;
        self.v.retain(|s| s & MARK == 0);
        self.v.shrink_to(self.v.len() + self.v.len() / 4 + 8);
        self.marked = 0;
        self.below = below_unmarked;
        self.head = 0;
    }

    /// Moves the frontier from `from` to `to` (settled first).
    fn advance(&mut self, from: Frontier, to: Frontier) {
        self.settle(from);
        let forward = match (from, to) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(f), Some(t)) => t >= f,
        };
        if forward {
            let to = to.unwrap_or(u64::MAX);
            while self.below < self.v.len() && self.v[self.below] & !MARK <= to {
                if self.v[self.below] & MARK == 0 {
                    self.leaked += 1;
                }
                self.below += 1;
            }
        } else {
            self.below = self.up_to(to);
            self.leaked = self.v[..self.below]
                .iter()
                .filter(|s| *s & MARK == 0)
                .count() as u64;
        }
    }
}

/// Groups of sockets by key `K`, each with its ordered starts.
#[derive(Debug)]
pub struct GroupIndex<K> {
    groups: HashMap<K, Starts>,
    frontier: Frontier,
}

impl<K> Default for GroupIndex<K> {
    fn default() -> Self {
        Self {
            groups: HashMap::new(),
            frontier: None,
        }
    }
}

impl<K: Copy + Eq + Hash> GroupIndex<K> {
    /// Adds a socket started at `start` to the group of `key`.
    pub fn add(&mut self, key: K, start: u64) {
        let frontier = self.frontier;
        self.groups.entry(key).or_default().insert(start, frontier);
    }

    /// Takes a socket started at `start` out of the group of `key`; an
    /// empty group is forgotten.
    pub fn remove(&mut self, key: K, start: u64) {
        let Some(starts) = self.groups.get_mut(&key) else {
            return;
        };
        starts.remove(start, self.frontier);
        if starts.is_empty() {
            self.groups.remove(&key);
        }
    }

    /// Moves the leak frontier to `to`, counting the starts it passes;
    /// every group is settled (sorted, counted) after it.
    pub fn advance(&mut self, to: Frontier) {
        let from = self.frontier;
        for starts in self.groups.values_mut() {
            starts.advance(from, to);
        }
        self.frontier = to;
    }

    /// Settles groups whose starts were added out of order, until about
    /// `budget` starts were sorted; `false` once none is left unsettled. A
    /// task that moved many sockets settles them this way, the lock
    /// released in between, rather than leave every sort to the next
    /// scrape's single hold of it.
    pub fn settle_some(&mut self, budget: usize) -> bool {
        let frontier = self.frontier;
        let mut sorted = 0;
        for starts in self.groups.values_mut().filter(|s| s.unsorted) {
            if sorted >= budget {
                return true;
            }
            sorted += starts.v.len();
            starts.settle(frontier);
        }
        false
    }

    /// Every group's numbers at `now_ns` (after [`GroupIndex::advance`] to
    /// the frontier of `now_ns`).
    pub fn stats(&self, now_ns: u64) -> impl Iterator<Item = (K, GroupStats)> + '_ {
        self.groups.iter().map(move |(key, s)| {
            let stats = GroupStats {
                sockets: s.len() as u64,
                leaked: s.leaked,
                oldest: s.first().map_or(Duration::ZERO, |start| age(now_ns, start)),
            };
            (*key, stats)
        })
    }

    /// Forgets every group.
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// Groups with at least one socket.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.groups.len()
    }
}
