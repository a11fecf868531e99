/*!
What comes in from the kernel: the ring buffer's events ([`Intake`], read
as they arrive through tokio's `AsyncFd`, decoded and applied to the table by
[`apply`]) and the sockets that stayed in CLOSE_WAIT past the grace
([`young::Young`], which reports them from the kernel's `YOUNG` map when a
wake-up event says there is something to look at, and asks the kernel
([`verify`]) whether the ones it reported are still there).

Nothing here runs on a clock: the kernel wakes intake when the ring gets a
record, and intake wakes the young scanner; reconciliation asks for a drain
when it needs one.
*/
mod apply;
pub mod kernel_log;
mod verify;
pub mod young;

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use cwatch_common::Event;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use apply::{Applied, apply, decode, track};

use crate::{owners, state::State};

/// The intake task: it owns the ring buffer and applies what it reads to
/// the shared table.
pub struct Intake {
    pub ring: RingBuf<MapData>,
    pub state: Arc<State>,
    /// Told about dead sockets to check.
    pub owners: owners::Handle,
}

impl Intake {
    /// Drains the ring buffer when the kernel signals a record and when
    /// reconciliation asks, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tokio::select! {
            result = drain_forever(self.ring, &self.state, &self.owners) => result,
            () = cancel.cancelled() => Ok(()),
        }
    }
}

async fn drain_forever(
    ring: RingBuf<MapData>,
    state: &State,
    owners: &owners::Handle,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
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
            () = state.drain_requested.notified() => drain(ring.get_mut(), &mut batch),
        };
        if malformed > 0 {
            state.telemetry.malformed_events(malformed);
            warn!(
                malformed,
                "ring buffer records of the wrong size (eBPF object mismatch?)"
            );
        }
        if !batch.is_empty() {
            let (mut wake, mut dead) = (false, false);
            {
                let mut table = state.lock_table();
                for event in &batch {
                    match apply(&mut table, event) {
                        Applied::Wake => wake = true,
                        Applied::Left { dead: true } => dead = true,
                        _ => {}
                    }
                }
            }
            debug!(events = batch.len(), wake, dead, "applied events");
            if wake {
                state.young_wake.notify_one();
            }
            if dead {
                owners.request(owners::Work::Resolve);
            }
            batch.clear();
        }
        state.set_drained(drain_start);
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
