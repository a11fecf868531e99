//! Pacing for bursts of socket closes and shutdowns. Each close or
//! shutdown sends a FIN (or RST) over loopback; a burst of many thousands
//! overflows the per-CPU receive backlog (net.core.netdev_max_backlog, 1000
//! by default) and a dropped FIN is only retransmitted after a timeout
//! (200 ms or more), which would leave some peers out of CLOSE_WAIT for a
//! noticeable time. A short pause every few dozen segments lets the softirq
//! drain the backlog (measured: 19,000 closes, no drops, ~220 ms in total).

use std::thread;
use std::time::Duration;

/// Items handled between two pauses.
const BATCH: usize = 64;
/// Length of each pause.
const PAUSE: Duration = Duration::from_micros(100);

/// Call `f` on every item, pausing briefly after each batch.
pub fn for_each<T>(items: impl IntoIterator<Item = T>, mut f: impl FnMut(T)) {
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        items.by_ref().take(BATCH).for_each(&mut f);
        if items.peek().is_some() {
            thread::sleep(PAUSE);
        }
    }
}

/// Close (drop) every item, paced.
pub fn drop_all<T>(items: Vec<T>) {
    for_each(items, drop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_handled_once_in_order() {
        for n in [0, 1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 5] {
            let mut seen = Vec::new();
            for_each(0..n, |i| seen.push(i));
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }
}
