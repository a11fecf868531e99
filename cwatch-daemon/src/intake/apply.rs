//! What an event, or a socket reported from `YOUNG`, does to the table:
//! pure logic on the table, unit-tested without a kernel.
use cwatch_common::{EVENT_DESTROY, EVENT_LEAVE, EVENT_WAKE, Event, REC_RELEASED};
use tracing::debug;

use crate::table::{DeadEntry, SockEntry, SocketTable};

/// What applying one event did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Sockets entered `YOUNG` while nobody looked: time to scan it.
    Wake,
    /// A tracked (or never seen) socket left CLOSE_WAIT; `dead`: its file
    /// was not released, so an fd may still hold it.
    Left {
        dead: bool,
    },
    /// A socket that had left CLOSE_WAIT was destroyed.
    Destroyed,
    Ignored,
}

/// Decodes one ring buffer record. `None` for a record of the wrong size
/// (an object/daemon mismatch: counted by the caller, never trusted).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is repr(C) plain data and `bytes` holds enough of it;
    // read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Starts tracking `entry`, a socket that stayed in CLOSE_WAIT past the
/// grace. Reconciliation may have found it first (estimated start): the
/// kernel's record brings the true start; the holders found meanwhile stay.
pub fn track(table: &mut SocketTable, mut entry: SockEntry) {
    if let Some(old) = table.get(entry.cookie)
        && old.resolved
    {
        let holders = old.holders.clone();
        entry.set_holders(holders);
    }
    table.insert(entry);
}

/// Applies one event to the table.
pub fn apply(table: &mut SocketTable, event: &Event) -> Applied {
    match event.kind {
        EVENT_WAKE => Applied::Wake,
        EVENT_LEAVE => {
            let sock = table
                .remove(event.rec.cookie)
                .unwrap_or_else(|| SockEntry::from_record(&event.rec));
            // The per-fd story: the task the kernel closed it in, and its
            // fd among the holders known a moment ago.
            if let Some(h) = sock.holders.iter().find(|h| h.pid == event.tgid) {
                debug!(
                    cookie = sock.cookie,
                    pid = h.pid,
                    fd = h.fd,
                    newstate = event.newstate,
                    "left CLOSE_WAIT"
                );
            }
            // Released by its last close(): nobody can hold it. Otherwise
            // (reset, keepalive, shutdown) an fd may still: check it later.
            let dead = event.rec.flags & REC_RELEASED == 0;
            if dead {
                table.insert_dead(DeadEntry::left(sock, event.ts_ns, event.newstate));
            }
            Applied::Left { dead }
        }
        EVENT_DESTROY => {
            table.remove_dead(event.rec.cookie);
            Applied::Destroyed
        }
        _ => Applied::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use cwatch_common::tcp_state;

    use super::*;
    use crate::table::tests::{holder, record};

    fn event(kind: u32, ts_ns: u64, rec: cwatch_common::SockRecord) -> Event {
        Event {
            kind,
            oldstate: tcp_state::CLOSE_WAIT as u16,
            newstate: tcp_state::LAST_ACK as u16,
            tgid: 0,
            _pad: 0,
            ts_ns,
            rec,
        }
    }

    #[test]
    fn tracked_then_left_then_destroyed() {
        let mut t = SocketTable::new();
        track(&mut t, SockEntry::from_record(&record(1, 5, None)));
        assert_eq!(t.len(), 1);
        let left = apply(
            &mut t,
            &event(EVENT_LEAVE, 2_000_000_005, record(1, 5, None)),
        );
        assert_eq!(left, Applied::Left { dead: true });
        assert!(t.is_empty());
        assert_eq!(t.dead_len(), 1, "waits for tcp_destroy_sock");
        assert!(!t.dead().next().unwrap().verified);
        let destroyed = apply(
            &mut t,
            &event(EVENT_DESTROY, 2_000_000_100, record(1, 5, None)),
        );
        assert_eq!(destroyed, Applied::Destroyed);
        assert_eq!(t.dead_len(), 0);
    }

    #[test]
    fn leave_by_the_last_close_is_not_a_dead_candidate() {
        let mut t = SocketTable::new();
        track(&mut t, SockEntry::from_record(&record(1, 5, None)));
        let mut released = record(1, 5, None);
        released.flags |= REC_RELEASED;
        let left = apply(&mut t, &event(EVENT_LEAVE, 1_000_000_005, released));
        assert_eq!(left, Applied::Left { dead: false });
        assert!(t.is_empty());
        assert_eq!(t.dead_len(), 0, "its file is gone: no fd can hold it");
    }

    #[test]
    fn tracking_after_reconciliation_keeps_holders_and_takes_the_true_start() {
        let mut t = SocketTable::new();
        let mut found = SockEntry::from_record(&record(9, 50, None));
        found.age_estimated = true;
        found.set_holders(vec![holder(77, 5, "app")]);
        t.insert(found);
        track(&mut t, SockEntry::from_record(&record(9, 10, None)));
        let e = t.get(9).unwrap();
        assert_eq!((e.start_ns, e.age_estimated), (10, false));
        assert_eq!(e.owner_fd(), Some(5));
    }

    #[test]
    fn decode_round_trips_and_rejects_short_records() {
        let ev = event(EVENT_LEAVE, 42, record(5, 41, Some((7, "x"))));
        // SAFETY: viewing a repr(C) value as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        assert_eq!(decode(bytes), Some(ev));
        assert_eq!(decode(&bytes[..size_of::<Event>() - 1]), None);
        // Found by the fuzz loop: a longer record (another object's) was
        // decoded as if it were ours.
        assert_eq!(decode(&[bytes, &[0]].concat()), None);
        assert_eq!(
            apply(&mut SocketTable::new(), &event(99, 0, record(6, 0, None))),
            Applied::Ignored
        );
        assert_eq!(
            apply(
                &mut SocketTable::new(),
                &event(EVENT_WAKE, 0, record(0, 0, None))
            ),
            Applied::Wake
        );
    }
}
