//! Sending events to the daemon through the `EVENTS` ring buffer.
use cwatch_common::{Event, SockRecord, counter};

use crate::maps::{self, EVENTS};

/// Wake the daemon only once this much is waiting. Waking it per event costs
/// an inter-processor interrupt per event (a VM exit on virtual machines,
/// microseconds each); the daemon also drains the ring on a short timer, so a
/// quiet trickle of events still shows within its poll period.
const WAKEUP_BYTES: u64 = 256 << 10;

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
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*event);
            let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
            let flags = if waiting >= WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(u64::from(flags));
        }
        None => maps::count(counter::EVENTS_LOST),
    }
}
