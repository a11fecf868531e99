//! The groups the table keeps up to date against the plain walk
//! ([`SocketTable::summarize_where`]) over random tables and random changes.
use std::time::Duration;

use super::{holder, record};
use crate::table::{
    SockEntry, SocketTable,
    groups::{GroupIndex, frontier},
};

const S: u64 = 1_000_000_000;

/// A small deterministic generator (xorshift64*): the same cases every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A socket with a random owner (or none), peer, direction and start.
fn random_entry(rng: &mut Rng, cookie: u64, now: u64) -> SockEntry {
    let owner = match rng.below(4) {
        0 => None,
        n => Some((100 + n as u32, ["a", "b", "c"][n as usize - 1])),
    };
    let mut rec = record(cookie, now.saturating_sub(rng.below(20) * S), owner);
    rec.peer_addr[3] = rng.below(3) as u8;
    rec.peer_port = 7000 + rng.below(2) as u16;
    let mut entry = SockEntry::from_record(&rec);
    // Some starts collide to the nanosecond; some are estimated.
    if rng.below(5) == 0 {
        entry.start_ns = now.saturating_sub(10 * S);
        entry.age_estimated = true;
    }
    entry
}

fn check(table: &mut SocketTable, now: u64, leak_after: Duration, step: usize) {
    let walked = table.summarize_where(now, leak_after, |_| true);
    let kept = table.summary(now, leak_after);
    assert_eq!(
        kept, walked,
        "step {step}, now {now}, leak-after {leak_after:?}"
    );
}

#[test]
fn kept_groups_equal_the_walk_through_random_changes() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut table = SocketTable::new();
        let mut now = 100 * S;
        let mut leak_after = Duration::from_secs(5);
        let mut next_cookie = 1;
        for step in 0..400 {
            match rng.below(10) {
                0..=2 => {
                    let e = random_entry(&mut rng, next_cookie, now);
                    table.insert(e);
                    next_cookie += 1;
                }
                // Replace an existing socket (an enter event after the
                // reconciliation found it).
                3 if next_cookie > 1 => {
                    let cookie = 1 + rng.below(next_cookie - 1);
                    let e = random_entry(&mut rng, cookie, now);
                    table.insert(e);
                }
                4 if next_cookie > 1 => {
                    table.remove(1 + rng.below(next_cookie - 1));
                }
                5 if next_cookie > 1 => {
                    let cookie = 1 + rng.below(next_cookie - 1);
                    let holders = match rng.below(3) {
                        0 => Vec::new(),
                        n => vec![holder(200 + n as u32, 3, "held")],
                    };
                    table.set_holders(cookie, holders);
                }
                // Changed in place, as reconciliation and the holders
                // refresh do.
                6 if next_cookie > 1 => {
                    let cookie = 1 + rng.below(next_cookie - 1);
                    table.update(cookie, |e| {
                        e.direction = crate::table::Direction::Outbound;
                        e.set_holders(vec![holder(300, 4, "moved")]);
                    });
                }
                7 => {
                    let first = table.cookies().next();
                    if let Some(cookie) = first {
                        table.update(cookie, |e| {
                            e.set_holders(Vec::new());
                            e.start_ns = e.start_ns.saturating_sub(S);
                        });
                    }
                }
                8 => now += rng.below(3) * S,
                _ => {
                    // A reload may change leak-after either way, to zero.
                    leak_after = Duration::from_secs(rng.below(12));
                }
            }
            // Some seeds change the table many times between summaries
            // (the first one builds the groups from scratch).
            if seed % 3 != 0 || step % 50 == 49 {
                check(&mut table, now, leak_after, step);
            }
        }
        // Every socket gone: no group left.
        let cookies: Vec<u64> = table.cookies().collect();
        for cookie in cookies {
            table.remove(cookie);
        }
        check(&mut table, now, leak_after, usize::MAX);
        assert!(table.summary(now, leak_after).processes.is_empty());
    }
}

#[test]
fn frontier_counts_each_start_once_and_moves_both_ways() {
    let mut index: GroupIndex<u8> = GroupIndex::default();
    index.add(1, 10 * S);
    index.add(1, 20 * S);
    index.add(2, 30 * S);
    let at = |index: &mut GroupIndex<u8>, now: u64, after: u64| {
        index.advance(frontier(now, Duration::from_secs(after)));
        let mut v: Vec<(u8, u64, u64)> = index
            .stats(now)
            .map(|(k, s)| (k, s.sockets, s.leaked))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(at(&mut index, 25 * S, 10), vec![(1, 2, 1), (2, 1, 0)]);
    assert_eq!(at(&mut index, 25 * S, 10), vec![(1, 2, 1), (2, 1, 0)]);
    assert_eq!(at(&mut index, 40 * S, 10), vec![(1, 2, 2), (2, 1, 1)]);
    assert_eq!(at(&mut index, 40 * S, 100), vec![(1, 2, 0), (2, 1, 0)]);
    assert_eq!(at(&mut index, 5 * S, 0), vec![(1, 2, 2), (2, 1, 1)]);
    index.remove(1, 10 * S);
    index.remove(1, 20 * S);
    assert_eq!(index.len(), 1, "an empty group is forgotten");
}

#[test]
fn a_large_group_marks_sweeps_and_keeps_its_numbers() {
    let mut index: GroupIndex<u8> = GroupIndex::default();
    let n = 1000u64;
    for i in 0..n {
        index.add(7, i);
    }
    // The same start twice, and one out of order.
    index.add(7, 500);
    index.advance(Some(n / 2));
    let stats = |index: &GroupIndex<u8>| index.stats(n).next().unwrap().1;
    assert_eq!(
        (stats(&index).sockets, stats(&index).leaked),
        (n + 1, n / 2 + 2)
    );
    index.remove(7, 500);
    assert_eq!(stats(&index).leaked, n / 2 + 1, "one of the two 500s left");
    for i in (0..n).rev().skip(3) {
        index.remove(7, i);
    }
    let s = stats(&index);
    assert_eq!((s.sockets, s.leaked), (3, 0), "997, 998, 999 are left");
    assert_eq!(s.oldest, Duration::from_nanos(3));
    index.remove(7, 997);
    assert_eq!(stats(&index).oldest, Duration::from_nanos(2));
}

#[test]
fn large_groups_taking_starts_in_any_order_match_a_plain_list() {
    // Start-up and the /proc walk add starts in any order, many equal (a
    // restart's estimated starts): these wait at the end of the group until
    // it is read, and equal starts are marked in turn.
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut index: GroupIndex<u8> = GroupIndex::default();
        let mut plain: Vec<Vec<u64>> = vec![Vec::new(); 3];
        let mut frontier = None;
        for step in 0..6000 {
            let key = rng.below(3) as u8;
            match rng.below(11) {
                0..=5 => {
                    // Few distinct values: long runs of equal starts.
                    let start = rng.below(if seed % 2 == 0 { 40 } else { 4000 });
                    index.add(key, start);
                    plain[key as usize].push(start);
                }
                6..=8 => {
                    let list = &mut plain[key as usize];
                    if !list.is_empty() {
                        let start = list.swap_remove(rng.below(list.len() as u64) as usize);
                        index.remove(key, start);
                    }
                }
                // A walk settling some groups between its holds of the lock.
                9 => {
                    index.settle_some(rng.below(3000) as usize);
                }
                _ => frontier = Some(rng.below(4000)),
            }
            if step % 97 == 0 || step == 5999 {
                index.advance(frontier);
                let got: std::collections::BTreeMap<u8, (u64, u64, Duration)> = index
                    .stats(5000)
                    .map(|(k, s)| (k, (s.sockets, s.leaked, s.oldest)))
                    .collect();
                for (key, list) in plain.iter().enumerate() {
                    let want = list.iter().min().map(|&oldest| {
                        let leaked = list
                            .iter()
                            .filter(|&&s| frontier.is_some_and(|f| s <= f))
                            .count() as u64;
                        (
                            list.len() as u64,
                            leaked,
                            Duration::from_nanos(5000 - oldest),
                        )
                    });
                    assert_eq!(
                        got.get(&(key as u8)).copied(),
                        want,
                        "seed {seed} step {step} key {key}"
                    );
                }
            }
        }
    }
}

#[test]
fn settling_in_slices_ends_and_keeps_every_number() {
    // Starts appended out of order to many groups, as a walk that moved a
    // million sockets to their holders leaves them: settled a slice at a
    // time, the numbers are those of the groups read unsettled.
    let mut rng = Rng(7);
    let mut sliced: GroupIndex<u16> = GroupIndex::default();
    let mut whole: GroupIndex<u16> = GroupIndex::default();
    sliced.advance(Some(2_000));
    whole.advance(Some(2_000));
    for _ in 0..20_000 {
        let (key, start) = (rng.below(50) as u16, rng.below(5_000));
        sliced.add(key, start);
        whole.add(key, start);
    }
    let mut holds = 0;
    while sliced.settle_some(1_000) {
        holds += 1;
        assert!(holds < 100, "settling never ends");
    }
    // About 400 starts a group: a slice of 1000 settles a few groups.
    assert!(holds >= 10, "settled in {holds} slices, not in slices");
    assert!(!sliced.settle_some(1_000), "nothing left to settle");
    sliced.advance(Some(3_000));
    whole.advance(Some(3_000));
    let numbers = |index: &GroupIndex<u16>| {
        index
            .stats(6_000)
            .map(|(k, s)| (k, (s.sockets, s.leaked, s.oldest)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(numbers(&sliced), numbers(&whole));
    assert_eq!(numbers(&sliced).len(), 50);
}
