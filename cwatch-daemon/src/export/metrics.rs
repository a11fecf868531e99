/*!
The Prometheus registry of the contract's families: the per-process and
per-peer gauges, the kernel's counters, the dead sockets held, and the build
info, rendered in the text exposition format together with the stages'
telemetry and cwatch's self-metrics.

Gauges are rebuilt from a [`Summary`] on every scrape, so a process or peer
whose last CLOSE_WAIT socket closed disappears instead of lingering at 0.
Counters that the kernel keeps (transitions, closes, lost events) are read
from the per-CPU maps at scrape time: exact even when events are lost.
*/
use std::sync::Mutex;

use cwatch_common::counter;
use prometheus::{
    Encoder as _, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::{selfmetrics::SelfMetrics, series::Families};
#[cfg(test)]
use crate::table::Summary;
use crate::{
    probe::{KernelCounters, KernelHistogram},
    telemetry::{Telemetry, register},
};

/// What the kernel counted, read at scrape time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub counters: KernelCounters,
    /// `None` when the histogram could not be read (logged).
    pub histogram: Option<KernelHistogram>,
}

pub struct Metrics {
    registry: Registry,
    /// Per-process families; rebuilt when the label set changes (reload).
    process: Mutex<ProcessGauges>,
    peer_sockets: IntGaugeVec,
    peer_leaked: IntGaugeVec,
    peer_oldest: prometheus::GaugeVec,
    transitions: IntCounter,
    closed: IntCounter,
    lost: IntCounter,
    kernel_errors: IntCounterVec,
    dead_held: IntGaugeVec,
    /// Kernel totals already added to the counters; also serialises scrapes.
    seen: Mutex<KernelCounters>,
    /// cwatch's own health: process, BPF programs, maps, folding, scrapes.
    pub own: SelfMetrics,
}

/// The three per-process gauge families, with their current label names.
/// They live in a registry of their own: a registry never accepts a family
/// again under other label names, and a reload may change them.
struct ProcessGauges {
    names: Vec<&'static str>,
    registry: Registry,
    sockets: IntGaugeVec,
    leaked: IntGaugeVec,
    oldest: prometheus::GaugeVec,
}

impl ProcessGauges {
    fn new(names: &[&'static str]) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let opts = |name: &str, help: &str| Opts::new(name, help);
        Self {
            names: names.to_vec(),
            sockets: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "cwatch_process_close_wait_sockets",
                        "Sockets of this process now in CLOSE_WAIT.",
                    ),
                    names,
                )
                .expect("valid gauge"),
            ),
            leaked: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "cwatch_process_leaked_sockets",
                        "Sockets of this process in CLOSE_WAIT for at least leak-after.",
                    ),
                    names,
                )
                .expect("valid gauge"),
            ),
            oldest: register(
                r,
                prometheus::GaugeVec::new(
                    opts(
                        "cwatch_process_oldest_close_wait_seconds",
                        "Age of this process's oldest CLOSE_WAIT socket.",
                    ),
                    names,
                )
                .expect("valid gauge"),
            ),
            registry,
        }
    }
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
        let process = ProcessGauges::new(&["pid", "comm"]);
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
            process: Mutex::new(process),
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
            own: SelfMetrics::new(&r),
            dead_held: gauge("cwatch_process_dead_sockets_held", "Sockets the kernel already closed (reset, keepalive timeout, ss -K, or shut down then FIN/ACK done) whose fd this process still holds.", &["pid", "comm"]),
            registry: r,
            seen: Mutex::new([0; counter::LEN as usize]),
        }
    }

    /// Renders the text exposition for `summary` with the contract's labels
    /// and no series limit (see [`Metrics::render_families`]).
    #[cfg(test)]
    pub fn render(
        &self,
        summary: &Summary,
        kernel: Option<&Kernel>,
        telemetry: &Telemetry,
    ) -> String {
        self.render_families(
            &Families::from_summary(summary),
            &["pid", "comm"],
            kernel,
            telemetry,
        )
    }

    /// Renders the text exposition for `families` (per-process label names
    /// `process_labels`), the kernel's counters and histogram (`None` before
    /// the probes are loaded) and the stages' `telemetry`.
    pub fn render_families(
        &self,
        families: &Families,
        process_labels: &[&'static str],
        kernel: Option<&Kernel>,
        telemetry: &Telemetry,
    ) -> String {
        let (kernel, histogram) = match kernel {
            Some(k) => (Some(&k.counters), k.histogram.as_ref()),
            None => (None, None),
        };
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
        self.fill_gauges(families, process_labels);
        self.own
            .folded(families.folded_process, families.folded_peer);
        let mut gathered = self.registry.gather();
        gathered.extend(telemetry.registry().gather());
        gathered.push(super::histogram::family(histogram));
        gathered.extend(
            self.process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .registry
                .gather(),
        );
        gathered.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&gathered, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn fill_gauges(&self, families: &Families, process_labels: &[&'static str]) {
        let mut process = self.process.lock().unwrap_or_else(|e| e.into_inner());
        if process.names != process_labels {
            *process = ProcessGauges::new(process_labels);
        }
        process.sockets.reset();
        process.leaked.reset();
        process.oldest.reset();
        self.peer_sockets.reset();
        self.peer_leaked.reset();
        self.peer_oldest.reset();
        self.dead_held.reset();
        for (labels, held) in &families.dead {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.dead_held.with_label_values(&labels).set(*held as i64);
        }
        for s in &families.process {
            let labels: Vec<&str> = s.labels.iter().map(String::as_str).collect();
            if labels.len() != process_labels.len() {
                continue;
            }
            process
                .sockets
                .with_label_values(&labels)
                .set(s.stats.sockets as i64);
            process
                .leaked
                .with_label_values(&labels)
                .set(s.stats.leaked as i64);
            process
                .oldest
                .with_label_values(&labels)
                .set(s.stats.oldest.as_secs_f64());
        }
        for s in &families.peer {
            let labels: Vec<&str> = s.labels.iter().map(String::as_str).collect();
            self.peer_sockets
                .with_label_values(&labels)
                .set(s.stats.sockets as i64);
            self.peer_leaked
                .with_label_values(&labels)
                .set(s.stats.leaked as i64);
            self.peer_oldest
                .with_label_values(&labels)
                .set(s.stats.oldest.as_secs_f64());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
