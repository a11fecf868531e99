//! Which leaked sockets to look at, without a walk that costs memory per
//! socket: each pass offers only the sockets that *became* leaked since the
//! last one (their CLOSE_WAIT start passed the leak-after frontier), with
//! [`SLACK`] of overlap for sockets tracked late; they wait in a bounded
//! queue, each offered once.
use std::collections::{HashMap, VecDeque};

/// Overlap of successive windows (ns): a socket reported to the table up to
/// this long after it turned leaked is still offered.
pub const SLACK_NS: u64 = 10_000_000_000;
/// Sockets waiting at most; beyond, they are dropped (and counted).
pub const MAX_PENDING: usize = 65_536;

/// The sockets waiting to have their stack looked at.
#[derive(Debug, Default)]
pub struct Queue {
    /// Starts up to here were offered.
    scanned: u64,
    pending: VecDeque<u64>,
    /// Cookies offered in the current window, with their start.
    offered: HashMap<u64, u64>,
    pub dropped: u64,
}

impl Queue {
    /// Offers the sockets of `keys` ((cookie, CLOSE_WAIT start ns)) whose
    /// start is at most `frontier` (now − leak-after) and after the last
    /// window (less the slack).
    pub fn scan(&mut self, keys: impl Iterator<Item = (u64, u64)>, frontier: u64) {
        let from = self.scanned.saturating_sub(SLACK_NS);
        if frontier <= self.scanned && self.scanned != 0 {
            return;
        }
        for (cookie, start) in keys {
            if (self.scanned == 0 || start > from) && start <= frontier {
                if self.offered.contains_key(&cookie) {
                    continue;
                }
                self.offered.insert(cookie, start);
                if self.pending.len() < MAX_PENDING {
                    self.pending.push_back(cookie);
                } else {
                    self.dropped += 1;
                }
            }
        }
        self.scanned = frontier.max(1);
        let keep_after = self.scanned.saturating_sub(SLACK_NS);
        self.offered.retain(|_, start| *start > keep_after);
    }

    /// Moves the window on without offering anything (nothing can have a
    /// sample).
    pub fn skip_to(&mut self, frontier: u64) {
        self.scanned = self.scanned.max(frontier).max(1);
        self.offered.clear();
    }

    pub fn pop(&mut self) -> Option<u64> {
        self.pending.pop_front()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn drain(q: &mut Queue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn each_socket_is_offered_once_when_it_turns_leaked() {
        let mut q = Queue::default();
        let keys = [(1, 100 * S), (2, 130 * S), (3, 160 * S)];
        q.scan(keys.into_iter(), 120 * S);
        assert_eq!(drain(&mut q), vec![1], "only the one leaked by now");
        q.scan(keys.into_iter(), 140 * S);
        assert_eq!(drain(&mut q), vec![2], "1 again? no: offered already");
        // A socket tracked late (start inside the slack) is still offered.
        q.scan(keys.into_iter().chain([(4, 135 * S)]), 150 * S);
        assert_eq!(drain(&mut q), vec![4]);
        // One older than the slack is not.
        q.scan(keys.into_iter().chain([(5, 100 * S)]), 170 * S);
        assert_eq!(drain(&mut q), vec![3]);
        assert!(
            q.offered.keys().all(|c| [3, 4].contains(c)),
            "the window forgets: {:?}",
            q.offered
        );
        q.scan(keys.into_iter(), 170 * S);
        assert_eq!(drain(&mut q), Vec::<u64>::new(), "no time passed");
    }

    #[test]
    fn the_queue_is_bounded_and_skipping_moves_on() {
        let mut q = Queue::default();
        let many = (0..MAX_PENDING as u64 + 10).map(|c| (c, S));
        q.scan(many, 2 * S);
        assert_eq!((q.len(), q.dropped), (MAX_PENDING, 10));
        let mut q = Queue::default();
        q.skip_to(100 * S);
        q.scan([(1, 50 * S), (2, 95 * S)].into_iter(), 101 * S);
        assert_eq!(drain(&mut q), vec![2]);
    }
}
