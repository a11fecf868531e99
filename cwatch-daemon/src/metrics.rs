/*!
The Prometheus registry: every metric family of DESIGN.md's contract plus a
few self-metrics, rendered in the text exposition format.

Gauges are rebuilt from a [`Summary`] on every scrape, so a process or peer
whose last CLOSE_WAIT socket closed disappears instead of lingering at 0.
Counters that the kernel keeps (transitions, closes, lost events) are read
from the per-CPU maps at scrape time: exact even when events are lost.
*/
use std::{sync::Mutex, time::Duration};

use cwatch_common::counter;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

use crate::{aging::Summary, owners::ScanCounts, reconcile::Corrections};

/// Buckets of `cwatch_close_wait_duration_seconds`, fixed by the contract.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// Kernel counter totals, indexed by `cwatch_common::counter`.
pub type KernelCounters = [u64; counter::LEN as usize];

pub struct Metrics {
    registry: Registry,
    process_sockets: IntGaugeVec,
    process_leaked: IntGaugeVec,
    process_oldest: prometheus::GaugeVec,
    peer_sockets: IntGaugeVec,
    peer_leaked: IntGaugeVec,
    peer_oldest: prometheus::GaugeVec,
    transitions: IntCounter,
    closed: IntCounter,
    lost: IntCounter,
    kernel_errors: IntCounterVec,
    malformed: IntCounter,
    corrections: IntCounterVec,
    duration: Histogram,
    dead_held: IntGaugeVec,
    attribution: Histogram,
    procfs_scans: IntCounterVec,
    /// Kernel totals already added to the counters; also serialises scrapes.
    seen: Mutex<KernelCounters>,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let fgauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let count = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid counter"))
        };
        let proc = &["pid", "comm"];
        let peer = &["peer_addr", "peer_port"];
        let build_info = gauge(
            "cwatch_build_info",
            "Always 1; the version label says which cwatch.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            process_sockets: gauge("cwatch_process_close_wait_sockets", "Sockets of this process now in CLOSE_WAIT.", proc),
            process_leaked: gauge("cwatch_process_leaked_sockets", "Sockets of this process in CLOSE_WAIT for at least leak-after.", proc),
            process_oldest: fgauge("cwatch_process_oldest_close_wait_seconds", "Age of this process's oldest CLOSE_WAIT socket.", proc),
            peer_sockets: gauge("cwatch_peer_close_wait_sockets", "Sockets to this peer now in CLOSE_WAIT.", peer),
            peer_leaked: gauge("cwatch_peer_leaked_sockets", "Sockets to this peer in CLOSE_WAIT for at least leak-after.", peer),
            peer_oldest: fgauge("cwatch_peer_oldest_close_wait_seconds", "Age of the oldest CLOSE_WAIT socket to this peer.", peer),
            transitions: count("cwatch_close_wait_transitions_total", "TCP transitions into CLOSE_WAIT seen by the kernel probe."),
            closed: count("cwatch_close_wait_closed_total", "TCP sockets that left CLOSE_WAIT (closed by their owner or reset)."),
            lost: count("cwatch_events_lost_total", "Kernel events dropped before reaching the daemon (ring buffer full)."),
            kernel_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new("cwatch_kernel_errors_total", "Kernel-side failures: map_full (a CLOSE_WAIT record or a socket owner could not be stored)."),
                    &["kind"],
                )
                .expect("valid counter"),
            ),
            malformed: count("cwatch_events_malformed_total", "Ring buffer records the daemon could not decode."),
            corrections: register(
                &r,
                IntCounterVec::new(
                    Opts::new("cwatch_reconcile_corrections_total", "Differences reconciliation against sock_diag had to fix: added (a CLOSE_WAIT socket missing from the table, e.g. a lost enter event), removed (a table entry the kernel no longer has in CLOSE_WAIT, e.g. a lost leave event), map_added / map_removed (the same for the kernel's pinned CLOSE_WAIT map)."),
                    &["kind"],
                )
                .expect("valid counter"),
            ),
            duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("cwatch_close_wait_duration_seconds", "Time from CLOSE_WAIT to close, for closed sockets whose start was seen.")
                        .buckets(DURATION_BUCKETS.to_vec()),
                )
                .expect("valid histogram"),
            ),
            dead_held: gauge("cwatch_process_dead_sockets_held", "Sockets the kernel already closed (reset, keepalive timeout, ss -K, or shut down then FIN/ACK done) whose fd this process still holds.", proc),
            attribution: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("cwatch_attribution_seconds", "Time from the transition into CLOSE_WAIT to the socket's fd holders being known (sockets closed within the grace period are never looked up).")
                        .buckets(vec![0.05, 0.1, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 60.0]),
                )
                .expect("valid histogram"),
            ),
            procfs_scans: register(
                &r,
                IntCounterVec::new(
                    Opts::new("cwatch_procfs_scans_total", "Reads of /proc for attribution: process (one process's fd table), walk (every process)."),
                    &["kind"],
                )
                .expect("valid counter"),
            ),
            registry: r,
            seen: Mutex::new([0; counter::LEN as usize]),
        }
    }

    /// A socket left CLOSE_WAIT after `d`.
    pub fn observe_closed(&self, d: Duration) {
        self.duration.observe(d.as_secs_f64());
    }

    pub fn malformed_events(&self, n: u64) {
        self.malformed.inc_by(n);
    }

    pub fn corrections(&self, c: Corrections) {
        for (kind, n) in [
            ("added", c.added),
            ("removed", c.removed),
            ("map_added", c.map_added),
            ("map_removed", c.map_removed),
        ] {
            self.corrections.with_label_values(&[kind]).inc_by(n);
        }
    }

    /// Holders of a socket became known `d` after its transition.
    pub fn observe_attribution(&self, d: Duration) {
        self.attribution.observe(d.as_secs_f64());
    }

    pub fn procfs_scans(&self, c: ScanCounts) {
        self.procfs_scans
            .with_label_values(&["process"])
            .inc_by(c.processes);
        self.procfs_scans
            .with_label_values(&["walk"])
            .inc_by(c.walks);
    }

    /// Renders the text exposition for `summary` and the kernel's counters
    /// (`None` before the probes are loaded).
    pub fn render(&self, summary: &Summary, kernel: Option<&KernelCounters>) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kernel) = kernel {
            let mut advance = |c: &IntCounter, index: u32| {
                let i = index as usize;
                c.inc_by(kernel[i].saturating_sub(seen[i]));
                seen[i] = seen[i].max(kernel[i]);
            };
            advance(&self.transitions, counter::TRANSITIONS);
            advance(&self.closed, counter::CLOSED);
            advance(&self.lost, counter::EVENTS_LOST);
            let full = self.kernel_errors.with_label_values(&["map_full"]);
            advance(&full, counter::RECORDS_FULL);
            advance(&full, counter::OWNERS_FULL);
            advance(&full, counter::LINGER_FULL);
        }
        self.fill_gauges(summary);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn fill_gauges(&self, summary: &Summary) {
        for g in [
            &self.process_sockets,
            &self.process_leaked,
            &self.peer_sockets,
            &self.peer_leaked,
        ] {
            g.reset();
        }
        self.process_oldest.reset();
        self.peer_oldest.reset();
        self.dead_held.reset();
        for (key, held) in &summary.dead {
            let labels = [key.pid_label(), key.comm_label()];
            self.dead_held
                .with_label_values(&[labels[0].as_str(), labels[1].as_str()])
                .set(*held as i64);
        }
        for (key, stats) in &summary.processes {
            let labels = [key.pid_label(), key.comm_label()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            self.process_sockets
                .with_label_values(&labels)
                .set(stats.sockets as i64);
            self.process_leaked
                .with_label_values(&labels)
                .set(stats.leaked as i64);
            self.process_oldest
                .with_label_values(&labels)
                .set(stats.oldest.as_secs_f64());
        }
        for (key, stats) in &summary.peers {
            let (addr, port) = (key.addr.to_string(), key.port_label());
            let labels = [addr.as_str(), port.as_str()];
            self.peer_sockets
                .with_label_values(&labels)
                .set(stats.sockets as i64);
            self.peer_leaked
                .with_label_values(&labels)
                .set(stats.leaked as i64);
            self.peer_oldest
                .with_label_values(&labels)
                .set(stats.oldest.as_secs_f64());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
