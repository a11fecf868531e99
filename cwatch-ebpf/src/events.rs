//! Sending events to the daemon through the `EVENTS` ring buffer. Events are
//! rare (sockets that stayed past the grace, dead sockets, wake-ups), so each
//! one lets the kernel wake the daemon when the ring was empty: the daemon
//! sleeps until there is work, and a burst costs one wake-up.
use cwatch_common::{EVENT_WAKE, Event, SockRecord, counter};

use crate::maps::{self, EVENTS};

/// An event of `kind` for the transition `old` → `new` of `rec`, now, in
/// the current task.
#[inline(always)]
pub fn event(kind: u32, old: u32, new: u32, ts_ns: u64, rec: SockRecord) -> Event {
    Event {
        kind,
        oldstate: old as u16,
        newstate: new as u16,
        tgid: crate::kernel::current_tgid(),
        _pad: 0,
        ts_ns,
        rec,
    }
}

/// Copies `event` into the ring; counts it as lost when the ring is full.
#[inline(always)]
pub fn submit(event: &Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*event);
            // 0: the kernel's adaptive wake-up (only when the daemon had
            // caught up with the ring).
            entry.submit(0);
        }
        None => {
            maps::count(counter::EVENTS_LOST);
            crate::log::event_lost(event.kind, event.rec.cookie);
        }
    }
}

/// Tells the daemon that `YOUNG` has a socket it has not seen.
#[inline(always)]
pub fn wake(old: u32, new: u32, ts_ns: u64) {
    submit(&event(EVENT_WAKE, old, new, ts_ns, SockRecord::zeroed()));
}
