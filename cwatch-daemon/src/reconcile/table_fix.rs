/*!
The table's side of a reconciliation pass: [`sync`] makes the socket table
hold exactly the CLOSE_WAIT sockets the kernel showed, in chunks of
[`SYNC_CHUNK`] sockets, the table's lock taken for each and released fairly
in between, so that a scrape or the intake never waits behind a whole pass
(a million sockets in one hold kept the lock for about half a second).

What a chunk decides about a socket it decides in one hold of the lock, as
the whole pass did before: a socket whose leave intake applies between two
chunks is either still in the table when its chunk runs (and left alone) or
gone from it and from the kernel's map, which the chunk asks again under the
same hold.
*/
use std::collections::{HashMap, HashSet};

use cwatch_common::SockRecord;

use super::{Corrections, Suspects};
use crate::{
    kernel_view::{KernelView, entry_from_diag},
    table::{Direction, SockEntry, SocketTable},
};

/// Sockets decided in one hold of the table's lock (a few ms at most).
pub const SYNC_CHUNK: usize = 8192;

/// Runs its argument on the locked table, one hold of the lock each call.
pub type WithTable<'a> = dyn FnMut(&mut dyn FnMut(&mut SocketTable)) + 'a;

/// What the pass read from the kernel, in the order it read it.
pub struct Found<'a> {
    pub view: &'a KernelView,
    /// The kernel's CLOSE_WAIT map, read after the drain; a record the
    /// kernel has deleted since is taken out of it here.
    pub map: &'a mut HashMap<u64, SockRecord>,
    /// `YOUNG`, read before `map`.
    pub young: &'a HashMap<u64, SockRecord>,
    pub now_ns: u64,
    /// When the dump began: entries recorded at or after it are newer than
    /// the dump and left alone.
    pub dump_start_ns: u64,
}

/// Makes the table hold exactly the CLOSE_WAIT sockets of `found.view` (in
/// the namespaces it covers). Call it after a drain of the ring that began
/// once the dump was complete: every event from before the dump is applied,
/// so a difference left is drift.
///
/// A socket in the map but not in the table lost its leave-side bookkeeping
/// (or a previous daemon reported it) and keeps its true start. A socket in
/// `young` is younger than the grace, not tracked yet: the young scanner
/// reports it if it stays. A socket in neither either predates cwatch (the
/// first pass), or left CLOSE_WAIT while the dump ran: after the first pass
/// it is added only when two passes in a row find it so (`suspects` carries
/// them).
///
/// `with_table` runs its argument on the locked table (one hold each call);
/// `gone` answers, under that hold, which of the given cookies the kernel's
/// map no longer has (they left since the map was read).
pub fn sync(
    found: Found<'_>,
    suspects: &mut Suspects,
    with_table: &mut WithTable<'_>,
    gone: &mut dyn FnMut(&[u64]) -> Vec<u64>,
) -> Corrections {
    let Found {
        view,
        map,
        young,
        now_ns,
        dump_start_ns,
    } = found;
    let mut c = Corrections::default();
    // Stale: the keys copied out in one hold (a few ms at a million), the
    // candidates chosen without the lock, each checked again when removed.
    let mut keys = Vec::new();
    with_table(&mut |table| keys = table.keys().collect());
    let stale: Vec<(u64, u32)> = keys
        .into_iter()
        .filter(|&(cookie, start_ns, netns)| {
            view.shows_gone(cookie, netns, start_ns, dump_start_ns)
        })
        .map(|(cookie, _, netns)| (cookie, netns))
        .collect();
    for chunk in stale.chunks(SYNC_CHUNK) {
        with_table(&mut |table| {
            for &(cookie, netns) in chunk {
                let still = table.start_of(cookie).is_some_and(|start_ns| {
                    view.shows_gone(cookie, netns, start_ns, dump_start_ns)
                });
                if still && !table.is_reporting(cookie) {
                    table.remove(cookie);
                    c.removed += 1;
                }
            }
        });
    }
    let first_pass = suspects.first_pass;
    let suspected = &suspects.cookies;
    let mut next_suspects = HashSet::new();
    let found: Vec<u64> = view.close_wait.keys().copied().collect();
    for chunk in found.chunks(SYNC_CHUNK) {
        with_table(&mut |table| {
            // A socket the dump and the map saw in CLOSE_WAIT that left
            // since (its leave already applied to the table) is no drift:
            // the kernel deleted its record, so ask the map again (not at
            // start: the table is empty then, every record a candidate).
            let recheck: Vec<u64> = chunk
                .iter()
                .filter(|_| !first_pass)
                .filter(|c| map.contains_key(c) && !young.contains_key(c) && !table.contains(**c))
                .copied()
                .collect();
            if !recheck.is_empty() {
                for cookie in gone(&recheck) {
                    map.remove(&cookie);
                }
            }
            for cookie in chunk {
                let Some((d, netns)) = view.close_wait.get(cookie) else {
                    continue;
                };
                if let Some(inode) = table.inode_of(*cookie) {
                    if inode == 0 && d.inode != 0 {
                        // Accepted since: now it has an fd to find.
                        table.update(*cookie, |e| {
                            e.inode = d.inode;
                            e.direction = Direction::Inbound;
                            e.resolved = false;
                        });
                    }
                    continue;
                }
                if young.contains_key(cookie) {
                    continue;
                }
                match map.get(cookie) {
                    Some(rec) if rec.start_ns != 0 => {
                        table.insert(SockEntry::from_record(rec));
                        c.added += 1;
                    }
                    _ if first_pass || suspected.contains(cookie) => {
                        table.insert(entry_from_diag(d, *netns, now_ns, view));
                        c.added += 1;
                    }
                    _ => {
                        next_suspects.insert(*cookie);
                    }
                }
            }
        });
    }
    suspects.cookies = next_suspects;
    suspects.first_pass = false;
    c
}
