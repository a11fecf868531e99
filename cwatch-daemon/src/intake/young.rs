/*!
Reporting the sockets that stay: every socket entering CLOSE_WAIT gets a
record in the kernel's `NURSERY` slots (or, its slot taken, the `YOUNG` map)
and nothing more; the programs send one wake-up event when the first one
arrives after the daemon last looked. This task then waits until the oldest
young socket is `track_after` old, reads both, and reports every socket that
is: it starts tracking it (the table, the gauges, the API) and moves its
record into `CLOSE_WAIT`, where the kernel looks for it when it leaves; then
it asks the kernel whether those sockets are still there ([`verify`]: a
record can outlive a socket whose way out went unseen). The
ones that left meanwhile never cost the daemon anything. When nothing young
is left to wait for, the task clears the kernel's `ARMED` word and sleeps
until the next wake-up.

What the kernel could not tell at the transition (who owns an accepted
socket, which way a connection goes when no watched process connected it)
is decided here, once per socket that stays: the listener of the local port
from `LISTENERS`, else the ephemeral port range.
*/
use std::{sync::Arc, time::Duration};

use cwatch_common::{REC_INBOUND, REC_OUTBOUND, REC_UNACCEPTED, SockRecord, control};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{track, verify};
use crate::{owners, probe::Probes, state::State, table::SockEntry, telemetry::Source};

/// The young scanner: it reads `YOUNG` and reports into the table.
pub struct Young {
    pub state: Arc<State>,
    pub probes: Arc<Probes>,
    /// Told about new sockets to attribute.
    pub owners: owners::Handle,
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral: (u16, u16),
    /// The daemon's network namespace: its sockets are checked as they are
    /// reported ([`verify`]).
    pub own_netns: Option<u32>,
}

/// What one scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Sockets now tracked.
    pub reported: usize,
    /// CLOCK_BOOTTIME ns when the next young socket is due, if any.
    pub next_due_ns: Option<u64>,
}

impl Young {
    /// Scans when woken and when the next young socket is due, until
    /// `cancel`. Scans once at start: a previous daemon's young sockets may
    /// be waiting.
    pub async fn run(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        let mut due: Option<u64> = Some(0);
        loop {
            let wait = due.map(|at| {
                let now = this.state.clock.now_ns();
                Duration::from_nanos(at.saturating_sub(now))
            });
            tokio::select! {
                () = cancel.cancelled() => return,
                () = this.state.young_wake.notified() => {
                    // The socket that woke us is due one grace from now.
                    let grace = this.state.config().track_after;
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(grace) => {}
                    }
                }
                () = sleep_for(wait) => {}
            }
            let scanner = Arc::clone(&this);
            match tokio::task::spawn_blocking(move || scanner.scan()).await {
                Ok(Ok(scan)) => due = scan.next_due_ns,
                Ok(Err(err)) => {
                    warn!("reading the kernel's young sockets: {err:#}");
                    due = Some(this.state.clock.now_ns() + 1_000_000_000);
                }
                Err(err) => warn!("young scanner task failed: {err}"),
            }
        }
    }

    /// Reports every young socket past the grace; clears `ARMED` when none
    /// is left to wait for.
    pub fn scan(&self) -> anyhow::Result<Scan> {
        let grace = u64::try_from(self.state.config().track_after.as_nanos()).unwrap_or(u64::MAX);
        let mut scan = self.report_due(grace)?;
        if scan.next_due_ns.is_none() {
            // Nothing left to wait for: let the next enter wake us. One more
            // look closes the race with an enter that saw ARMED still set.
            self.probes.set_control(control::ARMED, 0)?;
            let again = self.report_due(grace)?;
            if again.next_due_ns.is_some() || again.reported > 0 {
                self.probes.set_control(control::ARMED, 1)?;
            }
            scan.reported += again.reported;
            scan.next_due_ns = again.next_due_ns;
        }
        Ok(scan)
    }

    fn report_due(&self, grace: u64) -> anyhow::Result<Scan> {
        let young = self.probes.young_snapshot()?;
        let now = self.state.clock.now_ns();
        let mut scan = Scan::default();
        let mut due: Vec<SockRecord> = Vec::new();
        for rec in young.values() {
            if now.saturating_sub(rec.start_ns) >= grace {
                due.push(self.decide(*rec));
            } else {
                let at = rec.start_ns.saturating_add(grace);
                scan.next_due_ns = Some(scan.next_due_ns.map_or(at, |n| n.min(at)));
            }
        }
        if due.is_empty() {
            return Ok(scan);
        }
        // Tracked before its record moves: once in `CLOSE_WAIT` the kernel
        // sends its leave, which must find it. Marked as being reported
        // until checked, so that a reconciliation pass meanwhile leaves it
        // to this scan.
        {
            let mut table = self.state.lock_table();
            table.start_reporting(due.iter().map(|rec| rec.cookie));
            for rec in &due {
                track(&mut table, SockEntry::from_record(rec));
            }
        }
        let moved = self.move_records(&due);
        let (reported, gone) = match moved {
            Ok(split) => split,
            Err(err) => {
                // Left tracked: reconciliation checks them from now on.
                self.state
                    .lock_table()
                    .done_reporting(due.iter().map(|rec| rec.cookie));
                return Err(err);
            }
        };
        // Moved first: a socket that leaves from now on finds its record.
        let check = verify::vanished(&reported, self.own_netns, &mut verify::SockDiag);
        if check.failed > 0 {
            self.state.telemetry.source_failed(Source::SockDiag);
        }
        // Out of the table before the map: a map error then leaves at worst
        // a kernel record, which reconciliation removes, never a ghost row.
        {
            let mut table = self.state.lock_table();
            for cookie in gone.iter().chain(&check.gone) {
                table.remove(*cookie);
            }
            table.done_reporting(due.iter().map(|rec| rec.cookie));
        }
        if !check.gone.is_empty() {
            self.state.telemetry.young_vanished(check.gone.len() as u64);
            self.probes.update_close_wait(&[], &check.gone)?;
        }
        if reported.len() > check.gone.len() {
            self.owners.request(owners::Work::Resolve);
        }
        scan.reported = reported.len() - check.gone.len();
        debug!(
            reported = scan.reported,
            left = gone.len(),
            vanished = check.gone.len(),
            unchecked = check.failed,
            "reported young sockets"
        );
        Ok(scan)
    }

    /// Moves the records of `due` into the `CLOSE_WAIT` map: (moved, the
    /// cookies of sockets that left meanwhile).
    fn move_records(&self, due: &[SockRecord]) -> anyhow::Result<(Vec<SockRecord>, Vec<u64>)> {
        let mut gone = Vec::new();
        let mut reported = Vec::with_capacity(due.len());
        for rec in due {
            if self.probes.report(rec)? {
                reported.push(*rec);
            } else {
                gone.push(rec.cookie);
            }
        }
        Ok((reported, gone))
    }

    /// Direction and owner hint of a socket no watched process connected:
    /// the listener of its local port (inbound), else by the ephemeral
    /// port range.
    fn decide(&self, mut rec: SockRecord) -> SockRecord {
        if rec.flags & REC_OUTBOUND != 0 {
            return rec;
        }
        if let Some(listener) = self.probes.listener(rec.netns, rec.local_port) {
            rec.owner_tgid = listener.owner.tgid;
            rec.owner_comm = listener.owner.comm;
            if rec.flags & REC_UNACCEPTED == 0 {
                rec.flags |= REC_INBOUND;
            }
            return rec;
        }
        if rec.flags & REC_UNACCEPTED == 0 {
            let ephemeral = |p: u16| (self.ephemeral.0..=self.ephemeral.1).contains(&p);
            // The remote end picked the ephemeral port: we accepted it.
            rec.flags |= if ephemeral(rec.peer_port) && !ephemeral(rec.local_port) {
                REC_INBOUND
            } else {
                REC_OUTBOUND
            };
        }
        rec
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
