/*!
The kernel's limits, said once per interval: when the kernel counted events
lost (the ring buffer was full) or records it could not store (`YOUNG`,
`LINGER` or the socket storage full) since the last pass, one warning line
says how many of each, and that reconciliation fills the gap. However many
sockets a burst drops, the log gets at most one such line per
`--reconcile-interval`: the counters (`cwatch_events_lost_total`,
`cwatch_kernel_errors_total`) carry the numbers, the line tells the story.

And the one loss reconciliation cannot see in the kernel's socket table: a
lost wake-up, which would leave sockets waiting in `YOUNG`, untracked.
*/
use std::collections::HashMap;

use cwatch_common::{SockRecord, counter};
use tracing::{debug, warn};

use crate::{probe::KernelCounters, state::State};

/// The counters as the last pass saw them.
#[derive(Debug, Default)]
pub struct Limits {
    seen: KernelCounters,
}

/// What moved since the last pass, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub events_lost: u64,
    pub young_full: u64,
    pub linger_full: u64,
    pub owners_full: u64,
}

impl Moved {
    fn any(&self) -> bool {
        *self != Self::default()
    }
}

impl Limits {
    /// Takes the counters of this pass; what moved since the last one.
    pub fn observe(&mut self, now: &KernelCounters) -> Moved {
        let delta = |i: u32| now[i as usize].saturating_sub(self.seen[i as usize]);
        let moved = Moved {
            events_lost: delta(counter::EVENTS_LOST),
            young_full: delta(counter::RECORDS_FULL),
            linger_full: delta(counter::LINGER_FULL),
            owners_full: delta(counter::OWNERS_FULL),
        };
        self.seen = *now;
        moved
    }

    /// [`Limits::observe`], then the one line, if anything moved.
    pub fn log(&mut self, now: &KernelCounters, ring_bytes: u32, young_entries: u32) {
        if let Some(line) = describe(&self.observe(now), ring_bytes, young_entries) {
            warn!("{line}");
        }
    }
}

/// Wakes the young scanner when `YOUNG` holds a socket past the grace: its
/// wake-up event was lost (the ring was full when it entered, and the
/// kernel sends no other while `ARMED` stays set), so without this it would
/// wait there, untracked, until the next daemon start.
pub fn wake_young_if_overdue(state: &State, young: &HashMap<u64, SockRecord>) {
    let grace = u64::try_from(state.config().track_after.as_nanos()).unwrap_or(u64::MAX);
    let now = state.clock.now_ns();
    if young
        .values()
        .any(|r| now.saturating_sub(r.start_ns) > grace)
    {
        debug!("YOUNG holds sockets past the grace: waking the young scanner");
        state.young_wake.notify_one();
    }
}

/// The line for `moved`, or `None` when nothing did.
pub fn describe(moved: &Moved, ring_bytes: u32, young_entries: u32) -> Option<String> {
    if !moved.any() {
        return None;
    }
    let mut parts = Vec::new();
    if moved.events_lost > 0 {
        parts.push(format!(
            "{} events lost (ring buffer full, --ring-buffer-size {ring_bytes})",
            moved.events_lost
        ));
    }
    if moved.young_full > 0 {
        parts.push(format!(
            "{} sockets entering CLOSE_WAIT not recorded (YOUNG full, --young-sockets {young_entries})",
            moved.young_full
        ));
    }
    if moved.linger_full > 0 {
        parts.push(format!(
            "{} sockets leaving CLOSE_WAIT not recorded (LINGER full)",
            moved.linger_full
        ));
    }
    if moved.owners_full > 0 {
        parts.push(format!(
            "{} socket owners not stored (socket storage full)",
            moved.owners_full
        ));
    }
    Some(format!(
        "kernel limits reached since the last reconciliation: {}; this pass reads the kernel's socket table to fill the gap",
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(lost: u64, young: u64) -> KernelCounters {
        let mut k = KernelCounters::default();
        k[counter::EVENTS_LOST as usize] = lost;
        k[counter::RECORDS_FULL as usize] = young;
        k[counter::TRANSITIONS as usize] = 1_000_000;
        k
    }

    #[test]
    fn one_line_per_interval_whatever_the_numbers() {
        let mut limits = Limits::default();
        let moved = limits.observe(&counters(120, 4000));
        assert_eq!((moved.events_lost, moved.young_full), (120, 4000));
        let line = describe(&moved, 4096, 64).unwrap();
        assert_eq!(line.lines().count(), 1);
        assert!(line.contains("120 events lost"), "{line}");
        assert!(
            line.contains("4000 sockets entering CLOSE_WAIT not recorded"),
            "{line}"
        );
        assert!(line.contains("--young-sockets 64"), "{line}");
        assert!(!line.contains("LINGER"), "{line}");
        // Nothing moved since: no line, however high the totals.
        assert_eq!(
            describe(&limits.observe(&counters(120, 4000)), 4096, 64),
            None
        );
        let moved = limits.observe(&counters(121, 4000));
        assert_eq!(moved.events_lost, 1);
        assert_eq!(moved.young_full, 0);
    }

    #[test]
    fn counters_that_go_back_are_not_a_storm() {
        let mut limits = Limits::default();
        limits.observe(&counters(50, 50));
        // Counters restart from zero when the programs are reloaded.
        assert_eq!(limits.observe(&counters(0, 0)), Moved::default());
    }
}
