/*!
What the stages count while they work, for `/metrics`: events that could not
be decoded (intake), the fd-lookup latency and
the `/proc` reads (attribution), the corrections and passes
(reconciliation), the SIGHUP reloads, whether this run keeps its state
across restarts (pins), and the failures of each source the gauges are made
of ([`Source`]) with the time of the last good pass. One prometheus registry that the
exporter gathers beside its own families: a stage records here and never
needs to know how metrics are rendered.
*/
use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
};

/// Buckets of `cwatch_attribution_seconds`.
const ATTRIBUTION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// The kinds of `cwatch_reconcile_corrections_total`.
pub const CORRECTION_KINDS: [&str; 4] = ["added", "removed", "map_added", "map_removed"];

/// A source of what the gauges are made of that can fail on its own; each
/// failure is counted in `cwatch_source_failures_total{source}` and the
/// rest carries on (one failing source never fails a scrape or a pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A reconciliation pass that returned an error (kernel map read or
    /// write): the table went unchecked this interval.
    Reconcile,
    /// A network namespace that could not be entered (`setns`).
    Netns,
    /// A sock_diag dump that failed inside a namespace.
    SockDiag,
    /// A `/proc` read that failed for another reason than the process
    /// being gone (permission, a vanished proc root).
    Procfs,
    /// The kernel's per-CPU counters could not be read for a scrape.
    KernelCounters,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Reconcile,
        Source::Netns,
        Source::SockDiag,
        Source::Procfs,
        Source::KernelCounters,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Source::Reconcile => "reconcile",
            Source::Netns => "netns",
            Source::SockDiag => "sock_diag",
            Source::Procfs => "procfs",
            Source::KernelCounters => "kernel_counters",
        }
    }
}

/// The stages' counters and histograms.
pub struct Telemetry {
    registry: Registry,
    malformed: IntCounter,
    vanished: IntCounter,
    attribution: Histogram,
    procfs_scans: IntCounterVec,
    corrections: IntCounterVec,
    passes: IntCounterVec,
    reload_ok: Gauge,
    reloads: IntCounterVec,
    persistence: Gauge,
    source_failures: IntCounterVec,
    reconcile_last_success: Gauge,
    reconcile_interval: Gauge,
    reconcile_cpu: GaugeVec,
    safety_net: Gauge,
}

/// Registers `c` in `r`; names are fixed and unique, so this cannot fail.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    let _ = r.register(Box::new(c.clone()));
    c
}

/// A counter vector; the options are constants checked by the tests.
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options");
    register(r, vec)
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram options");
    register(r, h)
}

impl Telemetry {
    pub fn new() -> Self {
        let r = Registry::new();
        let malformed = IntCounter::new(
            "cwatch_events_malformed_total",
            "Ring buffer records the daemon could not decode.",
        )
        .expect("valid counter");
        let vanished = IntCounter::new(
            "cwatch_young_vanished_total",
            "Sockets the young scanner found gone from the kernel as it reported them (their way out of CLOSE_WAIT went unseen): never tracked.",
        )
        .expect("valid counter");
        let reload_ok = Gauge::new(
            "cwatch_config_last_reload_successful",
            "1 when the last SIGHUP reload succeeded (or none happened); 0 when it failed and the old config stays.",
        )
        .expect("valid gauge");
        let persistence = Gauge::new(
            "cwatch_persistence_enabled",
            "1 when the kernel maps are pinned (a restart keeps every socket's true start and owner); 0 when this run keeps nothing across a restart (no pin directory, or one that is not a writable bpffs, or pins of a newer cwatch).",
        )
        .expect("valid gauge");
        let t = Self {
            malformed: register(&r, malformed),
            vanished: register(&r, vanished),
            persistence: register(&r, persistence),
            attribution: histogram(
                &r,
                "cwatch_attribution_seconds",
                "Time from the transition into CLOSE_WAIT to the socket's fd holders being known (sockets closed within the grace period are never looked up).",
                ATTRIBUTION_BUCKETS,
            ),
            procfs_scans: counter_vec(
                &r,
                "cwatch_procfs_scans_total",
                "Reads of /proc for attribution: process (one process's fd table), walk (every process).",
                &["kind"],
            ),
            corrections: counter_vec(
                &r,
                "cwatch_reconcile_corrections_total",
                "Differences reconciliation against sock_diag had to fix: added (a CLOSE_WAIT socket missing from the table, e.g. a lost enter event), removed (a table entry the kernel no longer has in CLOSE_WAIT, e.g. a lost leave event), map_added / map_removed (the same for the kernel's pinned CLOSE_WAIT map).",
                &["kind"],
            ),
            passes: counter_vec(
                &r,
                "cwatch_reconcile_passes_total",
                "Reconciliation passes by kind: full (sock_diag dump, map read, fixes) or skipped (no event lost since the last full pass).",
                &["pass"],
            ),
            reload_ok: register(&r, reload_ok),
            reloads: counter_vec(
                &r,
                "cwatch_config_reloads_total",
                "SIGHUP reloads, by result (success, failure).",
                &["result"],
            ),
            source_failures: counter_vec(
                &r,
                "cwatch_source_failures_total",
                "Failures of one source of the gauges, which the rest outlive: reconcile (a pass that failed), netns (a namespace that could not be entered), sock_diag (a dump that failed in a namespace), procfs (a /proc read that failed for another reason than the process being gone), kernel_counters (the kernel's counters unreadable for a scrape).",
                &["source"],
            ),
            reconcile_last_success: register(
                &r,
                Gauge::new(
                    "cwatch_reconcile_last_success_timestamp_seconds",
                    "Unix time of the end of the last reconciliation pass that succeeded (full or skipped); 0 before the first.",
                )
                .expect("valid gauge"),
            ),
            reconcile_interval: register(
                &r,
                Gauge::new(
                    "cwatch_reconcile_interval_seconds",
                    "The configured --reconcile-interval: alerts count missed passes in it.",
                )
                .expect("valid gauge"),
            ),
            reconcile_cpu: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "cwatch_reconcile_cpu_seconds",
                        "CPU time of the last full reconciliation pass (part=\"pass\": dumps, map read, fixes) and of the last walk of /proc (part=\"walk\"): what --reconcile-budget spaces the safety-net passes by.",
                    ),
                    &["part"],
                )
                .expect("valid gauge"),
            ),
            safety_net: register(
                &r,
                Gauge::new(
                    "cwatch_reconcile_safety_net_seconds",
                    "How far apart full passes are when no event is lost: ten --reconcile-interval, or longer where the last pass and walk cost more CPU than --reconcile-budget allows.",
                )
                .expect("valid gauge"),
            ),
            registry: r,
        };
        for part in ["pass", "walk"] {
            t.reconcile_cpu.with_label_values(&[part]).set(0.0);
        }
        for source in Source::ALL {
            t.source_failures
                .with_label_values(&[source.label()])
                .inc_by(0);
        }
        t.reload_ok.set(1.0);
        for result in ["success", "failure"] {
            t.reloads.with_label_values(&[result]).inc_by(0);
        }
        for pass in ["full", "skipped"] {
            t.passes.with_label_values(&[pass]).inc_by(0);
        }
        t
    }

    /// The registry the exporter gathers.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Ring buffer records of the wrong size.
    pub fn malformed_events(&self, n: u64) {
        self.malformed.inc_by(n);
    }

    /// Reported sockets the kernel no longer had.
    pub fn young_vanished(&self, n: u64) {
        self.vanished.inc_by(n);
    }

    /// Holders of a socket became known `d` after its transition.
    pub fn observe_attribution(&self, d: Duration) {
        self.attribution.observe(d.as_secs_f64());
    }

    /// `processes` fd tables were read, and `walks` walks of all of `/proc`.
    pub fn procfs_scans(&self, processes: u64, walks: u64) {
        self.procfs_scans
            .with_label_values(&["process"])
            .inc_by(processes);
        self.procfs_scans.with_label_values(&["walk"]).inc_by(walks);
    }

    /// (processes, walks) counted so far.
    #[cfg(test)]
    pub fn procfs_scan_counts(&self) -> (u64, u64) {
        let get = |kind: &str| self.procfs_scans.with_label_values(&[kind]).get();
        (get("process"), get("walk"))
    }

    /// Corrections of one pass, in the order of [`CORRECTION_KINDS`].
    pub fn corrections(&self, counts: [u64; 4]) {
        for (kind, n) in CORRECTION_KINDS.iter().zip(counts) {
            self.corrections.with_label_values(&[kind]).inc_by(n);
        }
    }

    /// One reconciliation pass ran: `full` or skipped.
    pub fn reconcile_pass(&self, full: bool) {
        self.passes
            .with_label_values(&[if full { "full" } else { "skipped" }])
            .inc();
    }

    /// Whether the kernel maps are pinned in this run.
    pub fn persistence(&self, enabled: bool) {
        self.persistence.set(f64::from(u8::from(enabled)));
    }

    /// One failure of `source`.
    pub fn source_failed(&self, source: Source) {
        self.source_failures
            .with_label_values(&[source.label()])
            .inc();
    }

    /// Failures of `source` so far.
    pub fn source_failures(&self, source: Source) -> u64 {
        self.source_failures
            .with_label_values(&[source.label()])
            .get()
    }

    /// The counter of `source`'s failures, for a reader that counts them
    /// itself (the proc root).
    pub fn source_counter(&self, source: Source) -> IntCounter {
        self.source_failures.with_label_values(&[source.label()])
    }

    /// A reconciliation pass ended: `ok`, or failed (counted).
    pub fn reconciled(&self, ok: bool) {
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.reconcile_last_success.set(now);
        } else {
            self.source_failed(Source::Reconcile);
        }
    }

    /// The interval passes are meant to run at.
    pub fn set_reconcile_interval(&self, every: Duration) {
        self.reconcile_interval.set(every.as_secs_f64());
    }

    /// The last full reconciliation pass took `cpu` of its thread's time.
    pub fn pass_cpu(&self, cpu: Duration) {
        self.reconcile_cpu
            .with_label_values(&["pass"])
            .set(cpu.as_secs_f64());
    }

    /// The last walk of `/proc` took `cpu` of the worker's time.
    pub fn walk_cpu(&self, cpu: Duration) {
        self.reconcile_cpu
            .with_label_values(&["walk"])
            .set(cpu.as_secs_f64());
    }

    /// The CPU time of the last full pass and of the last walk, together:
    /// what the safety net is spaced by.
    pub fn last_full_pass_cpu(&self) -> Duration {
        let s: f64 = ["pass", "walk"]
            .iter()
            .map(|part| self.reconcile_cpu.with_label_values(&[part]).get())
            .sum();
        Duration::try_from_secs_f64(s).unwrap_or_default()
    }

    /// Full passes are now `every` apart when nothing is lost.
    pub fn set_safety_net(&self, every: Duration) {
        self.safety_net.set(every.as_secs_f64());
    }

    /// A SIGHUP reload succeeded (`ok`) or changed nothing.
    pub fn reloaded(&self, ok: bool) {
        self.reload_ok.set(f64::from(u8::from(ok)));
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, TextEncoder};

    use super::*;

    fn text(t: &Telemetry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&t.registry().gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn failures_are_counted_by_source_and_a_good_pass_is_timestamped() {
        let t = Telemetry::new();
        let before = text(&t);
        for source in Source::ALL {
            let line = format!(
                "cwatch_source_failures_total{{source=\"{}\"}} 0",
                source.label()
            );
            assert!(
                before.contains(&line),
                "every source from the start: {before}"
            );
        }
        assert!(before.contains("cwatch_reconcile_last_success_timestamp_seconds 0"));
        t.reconciled(false);
        t.source_failed(Source::Netns);
        t.source_failed(Source::Netns);
        t.set_reconcile_interval(Duration::from_secs(60));
        let after = text(&t);
        assert!(
            after.contains("cwatch_source_failures_total{source=\"reconcile\"} 1"),
            "{after}"
        );
        assert!(
            after.contains("cwatch_source_failures_total{source=\"netns\"} 2"),
            "{after}"
        );
        assert!(
            after.contains("cwatch_reconcile_last_success_timestamp_seconds 0"),
            "a failed pass is no success"
        );
        assert!(
            after.contains("cwatch_reconcile_interval_seconds 60"),
            "{after}"
        );
        t.reconciled(true);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - t.reconcile_last_success.get()).abs() < 60.0);
        assert_eq!(t.source_failures(Source::Reconcile), 1);
    }
}
