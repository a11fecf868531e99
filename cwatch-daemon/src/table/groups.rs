/*!
Per-group gauge numbers kept up to date as sockets come and go, so that a
scrape costs the number of groups, not the number of sockets.

A [`GroupIndex`] keeps, for each group key (a process, a peer), the start
times of its sockets in order: the count is their number, the oldest age is
`now - first`, and the leaked count (start at or before `now - leak-after`)
is kept against a frontier that only moves forward with the clock: moving it
counts the starts it passes, once. Groups are numbered (ids are reused once a
group empties) so that a socket remembers its groups in a few bytes.
*/
use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
    ops::Bound,
    time::Duration,
};

use super::keys::{GroupStats, age};

/// A socket in a group: its start time, and its cookie to tell apart
/// sockets that started in the same nanosecond.
type Member = (u64, u64);

/// Up to this many members a group keeps a sorted vector (one small
/// allocation for the many groups of one or two sockets); beyond it a
/// B-tree, so that a group of a million stays cheap to change.
pub(super) const SMALL: usize = 32;

/// The start times of one group's sockets, in order.
#[derive(Debug)]
enum Starts {
    Small(Vec<Member>),
    Large(BTreeSet<Member>),
}

impl Starts {
    fn insert(&mut self, m: Member) {
        match self {
            Starts::Small(v) => {
                if let Err(at) = v.binary_search(&m) {
                    v.insert(at, m);
                }
                if v.len() > SMALL {
                    *self = Starts::Large(v.drain(..).collect());
                }
            }
            Starts::Large(set) => {
                set.insert(m);
            }
        }
    }

    fn remove(&mut self, m: &Member) -> bool {
        match self {
            Starts::Small(v) => match v.binary_search(m) {
                Ok(at) => {
                    v.remove(at);
                    true
                }
                Err(_) => false,
            },
            Starts::Large(set) => {
                let removed = set.remove(m);
                if set.len() < SMALL / 2 {
                    *self = Starts::Small(std::mem::take(set).into_iter().collect());
                }
                removed
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Starts::Small(v) => v.len(),
            Starts::Large(set) => set.len(),
        }
    }

    fn first(&self) -> Option<u64> {
        match self {
            Starts::Small(v) => v.first().map(|m| m.0),
            Starts::Large(set) => set.first().map(|m| m.0),
        }
    }

    /// Members whose start is after `after` (`None`: any) and at or before
    /// `until`.
    fn count_between(&self, after: Option<u64>, until: u64) -> u64 {
        if after.is_some_and(|a| a >= until) {
            return 0;
        }
        let lower = match after {
            Some(a) => Bound::Excluded((a, u64::MAX)),
            None => Bound::Unbounded,
        };
        let upper = Bound::Included((until, u64::MAX));
        match self {
            Starts::Small(v) => v
                .iter()
                .filter(|m| after.is_none_or(|a| m.0 > a) && m.0 <= until)
                .count() as u64,
            Starts::Large(set) => set.range((lower, upper)).count() as u64,
        }
    }
}

#[derive(Debug)]
struct Group<K> {
    key: K,
    starts: Starts,
    /// Members with a start at or before the index's frontier.
    leaked: u64,
}

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

/// Groups of sockets by key `K`, each with its ordered starts.
#[derive(Debug)]
pub struct GroupIndex<K> {
    ids: HashMap<K, u32>,
    groups: Vec<Option<Group<K>>>,
    free: Vec<u32>,
    frontier: Frontier,
}

impl<K> Default for GroupIndex<K> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            groups: Vec::new(),
            free: Vec::new(),
            frontier: None,
        }
    }
}

impl<K: Copy + Eq + Hash> GroupIndex<K> {
    /// Adds socket `cookie` started at `start` to the group of `key`;
    /// returns the group's id.
    pub fn add(&mut self, key: K, start: u64, cookie: u64) -> u32 {
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None => {
                let group = Group {
                    key,
                    starts: Starts::Small(Vec::new()),
                    leaked: 0,
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.groups[id as usize] = Some(group);
                        id
                    }
                    None => {
                        self.groups.push(Some(group));
                        (self.groups.len() - 1) as u32
                    }
                };
                self.ids.insert(key, id);
                id
            }
        };
        if let Some(group) = self.groups[id as usize].as_mut() {
            let before = group.starts.len();
            group.starts.insert((start, cookie));
            if group.starts.len() > before && at_or_before(start, self.frontier) {
                group.leaked += 1;
            }
        }
        id
    }

    /// Takes socket `cookie` (started at `start`) out of group `id`; an
    /// empty group is forgotten.
    pub fn remove(&mut self, id: u32, start: u64, cookie: u64) {
        let Some(slot) = self.groups.get_mut(id as usize) else {
            return;
        };
        let Some(group) = slot.as_mut() else {
            return;
        };
        if group.starts.remove(&(start, cookie)) && at_or_before(start, self.frontier) {
            group.leaked = group.leaked.saturating_sub(1);
        }
        if group.starts.len() == 0 {
            self.ids.remove(&group.key);
            *slot = None;
            self.free.push(id);
        }
    }

    /// The key of group `id`.
    pub fn key(&self, id: u32) -> Option<K> {
        self.groups.get(id as usize)?.as_ref().map(|g| g.key)
    }

    /// Moves the leak frontier to `to`, counting the starts it passes.
    pub fn advance(&mut self, to: Frontier) {
        let from = self.frontier;
        if to == from {
            return;
        }
        for group in self.groups.iter_mut().flatten() {
            match (from, to) {
                (_, Some(t)) if from.is_none_or(|f| f < t) => {
                    group.leaked += group.starts.count_between(from, t);
                }
                (Some(f), _) => {
                    let passed = group.starts.count_between(to, f);
                    group.leaked = group.leaked.saturating_sub(passed);
                }
                (None, _) => {}
            }
        }
        self.frontier = to;
    }

    /// Every group's numbers at `now_ns` (after [`GroupIndex::advance`] to
    /// the frontier of `now_ns`).
    pub fn stats(&self, now_ns: u64) -> impl Iterator<Item = (K, GroupStats)> + '_ {
        self.groups.iter().flatten().map(move |g| {
            let stats = GroupStats {
                sockets: g.starts.len() as u64,
                leaked: g.leaked,
                oldest: g.starts.first().map_or(Duration::ZERO, |s| age(now_ns, s)),
            };
            (g.key, stats)
        })
    }

    /// Groups with at least one socket.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}
