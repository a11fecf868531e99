/*!
Event intake: reads the kernel's ring buffer as events arrive (tokio
`AsyncFd`), decodes them and applies them to the socket table. Closed sockets
feed the CLOSE_WAIT duration histogram and wait, as dead sockets, for the
kernel to destroy them (attribution checks whether an fd still holds them).
*/
use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use cwatch_common::{EVENT_DESTROY, EVENT_ENTER, EVENT_LEAVE, Event, REC_RELEASED};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    state::State,
    table::{DeadEntry, SockEntry, SocketTable},
};

/// What applying one event did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    Entered,
    /// Left CLOSE_WAIT after this long; `None` when the start was not seen
    /// (the socket predates cwatch) or only estimated.
    Left(Option<Duration>),
    /// A socket that had left CLOSE_WAIT was destroyed.
    Destroyed,
    Ignored,
}

/// Decodes one ring buffer record. `None` for a record of the wrong size,
/// longer or shorter (an object/daemon mismatch: counted by the caller,
/// never trusted).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is repr(C) plain data and `bytes` holds enough of it;
    // read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Applies one event to the table.
pub fn apply(table: &mut SocketTable, event: &Event) -> Applied {
    match event.kind {
        EVENT_ENTER => {
            let mut entry = SockEntry::from_record(&event.rec);
            // Reconciliation may have found it first (estimated start): the
            // event brings the true start; keep the holders found meanwhile.
            if let Some(old) = table.get(entry.cookie)
                && old.resolved
            {
                let holders = old.holders.clone();
                entry.set_holders(holders);
            }
            table.insert(entry);
            Applied::Entered
        }
        EVENT_LEAVE => {
            let (start, sock) = match table.remove(event.rec.cookie) {
                Some(entry) if !entry.age_estimated => (Some(entry.start_ns), entry),
                Some(entry) => (None, entry),
                // Missed the enter event: the kernel's record still knows,
                // unless its start is unknown or an estimate.
                None => {
                    let sock = SockEntry::from_record(&event.rec);
                    let seen = event.rec.start_ns != 0 && !sock.age_estimated;
                    (seen.then_some(event.rec.start_ns), sock)
                }
            };
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
            if event.rec.flags & REC_RELEASED == 0 {
                table.insert_dead(DeadEntry::left(sock, event.ts_ns, event.newstate));
            }
            Applied::Left(start.map(|s| Duration::from_nanos(event.ts_ns.saturating_sub(s))))
        }
        EVENT_DESTROY => {
            table.remove_dead(event.rec.cookie);
            Applied::Destroyed
        }
        _ => Applied::Ignored,
    }
}

/// How often the ring is drained when the kernel did not wake us. The
/// programs wake the daemon only once a backlog builds up (one interrupt per
/// event would cost more than the rest of the program), so this bounds how
/// late a lone event shows in /metrics.
pub const POLL_PERIOD: Duration = Duration::from_millis(50);

/// The intake task: it owns the ring buffer and applies what it reads to
/// the shared table.
pub struct Intake {
    pub ring: RingBuf<MapData>,
    pub state: Arc<State>,
}

impl Intake {
    /// Drains the ring buffer when the kernel signals a backlog and every
    /// `POLL_PERIOD`, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tokio::select! {
            result = drain_forever(self.ring, &self.state) => result,
            () = cancel.cancelled() => Ok(()),
        }
    }
}

async fn drain_forever(ring: RingBuf<MapData>, state: &State) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
    let mut tick = tokio::time::interval(POLL_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Event> = Vec::with_capacity(1024);
    loop {
        let drain_start = state.clock.now_ns();
        let malformed = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let n = drain(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
                n
            }
            _ = tick.tick() => drain(ring.get_mut(), &mut batch),
        };
        if malformed > 0 {
            state.telemetry.malformed_events(malformed);
            warn!(
                malformed,
                "ring buffer records of the wrong size (eBPF object mismatch?)"
            );
        }
        if batch.is_empty() {
            state.set_drained(drain_start);
            continue;
        }
        let mut durations = Vec::new();
        {
            let mut table = state.lock_table();
            for event in &batch {
                if let Applied::Left(Some(d)) = apply(&mut table, event) {
                    durations.push(d);
                }
            }
        }
        debug!(
            events = batch.len(),
            closed = durations.len(),
            "applied events"
        );
        for d in durations {
            state.telemetry.observe_closed(d);
        }
        state.set_drained(drain_start);
        batch.clear();
    }
}

/// Moves every waiting record into `batch`; returns how many were malformed.
fn drain(ring: &mut RingBuf<MapData>, batch: &mut Vec<Event>) -> u64 {
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(event) => batch.push(event),
            None => malformed += 1,
        }
    }
    malformed
}

#[cfg(test)]
mod tests {
    use cwatch_common::tcp_state;

    use super::*;
    use crate::table::tests::record;

    fn event(kind: u32, ts_ns: u64, rec: cwatch_common::SockRecord) -> Event {
        Event {
            kind,
            oldstate: tcp_state::ESTABLISHED as u16,
            newstate: tcp_state::CLOSE_WAIT as u16,
            tgid: 0,
            _pad: 0,
            ts_ns,
            rec,
        }
    }

    #[test]
    fn enter_then_leave_measures_the_duration() {
        let mut t = SocketTable::new();
        assert_eq!(
            apply(&mut t, &event(EVENT_ENTER, 5, record(1, 5, None))),
            Applied::Entered
        );
        assert_eq!(t.len(), 1);
        let left = apply(
            &mut t,
            &event(EVENT_LEAVE, 2_000_000_005, record(1, 5, None)),
        );
        assert_eq!(left, Applied::Left(Some(Duration::from_secs(2))));
        assert!(t.is_empty());
        assert_eq!(t.dead_len(), 1, "waits for tcp_destroy_sock");
        assert!(!t.dead().next().unwrap().verified);
        assert_eq!(
            apply(
                &mut t,
                &event(EVENT_DESTROY, 2_000_000_100, record(1, 5, None))
            ),
            Applied::Destroyed
        );
        assert_eq!(t.dead_len(), 0);
    }

    #[test]
    fn leave_by_the_last_close_is_not_a_dead_candidate() {
        let mut t = SocketTable::new();
        apply(&mut t, &event(EVENT_ENTER, 5, record(1, 5, None)));
        let mut released = record(1, 5, None);
        released.flags |= REC_RELEASED;
        let left = apply(&mut t, &event(EVENT_LEAVE, 1_000_000_005, released));
        assert_eq!(left, Applied::Left(Some(Duration::from_secs(1))));
        assert!(t.is_empty());
        assert_eq!(t.dead_len(), 0, "its file is gone: no fd can hold it");
    }

    #[test]
    fn enter_after_reconciliation_keeps_holders_and_takes_the_true_start() {
        let mut t = SocketTable::new();
        let mut found = SockEntry::from_record(&record(9, 50, None));
        found.age_estimated = true;
        found.set_holders(vec![crate::table::tests::holder(77, 5, "app")]);
        t.insert(found);
        apply(&mut t, &event(EVENT_ENTER, 10, record(9, 10, None)));
        let e = t.get(9).unwrap();
        assert_eq!((e.start_ns, e.age_estimated), (10, false));
        assert_eq!(e.owner_fd(), Some(5));
    }

    #[test]
    fn leave_without_enter_uses_the_kernel_record_or_nothing() {
        let mut t = SocketTable::new();
        let left = apply(&mut t, &event(EVENT_LEAVE, 3_000, record(2, 1_000, None)));
        assert_eq!(left, Applied::Left(Some(Duration::from_nanos(2_000))));
        let mut estimated = record(7, 1_000, None);
        estimated.flags |= cwatch_common::REC_ESTIMATED;
        assert_eq!(
            apply(&mut t, &event(EVENT_LEAVE, 3_000, estimated)),
            Applied::Left(None),
            "an estimated start written back to the map stays out of the histogram"
        );
        let unknown = apply(&mut t, &event(EVENT_LEAVE, 3_000, record(3, 0, None)));
        assert_eq!(
            unknown,
            Applied::Left(None),
            "no start seen: no histogram sample"
        );
    }

    #[test]
    fn estimated_starts_stay_out_of_the_histogram() {
        let mut t = SocketTable::new();
        let mut entry = SockEntry::from_record(&record(4, 10, None));
        entry.age_estimated = true;
        t.insert(entry);
        assert_eq!(
            apply(&mut t, &event(EVENT_LEAVE, 99, record(4, 10, None))),
            Applied::Left(None)
        );
    }

    #[test]
    fn decode_round_trips_and_rejects_short_records() {
        let ev = event(EVENT_ENTER, 42, record(5, 41, Some((7, "x"))));
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
    }
}
