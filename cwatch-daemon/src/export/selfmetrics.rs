/*!
cwatch's metrics about itself: the standard `process_*` family (CPU, RSS,
open fds, from the prometheus crate's process collector), what its BPF
programs cost the kernel (`cwatch_bpf_program_run_seconds_total` /
`_runs_total`, counted by the kernel only while `kernel.bpf_stats_enabled`
is 1), how full its maps are, how many series were folded by the series
limits, and how long a scrape took: what a scrape learns. What the stages
count as they work is in [`crate::telemetry`].
*/
use std::{collections::HashMap, sync::Mutex, time::Duration};

use prometheus::{CounterVec, Gauge, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::{probe::ProgramStats, telemetry::register as reg};

pub struct SelfMetrics {
    folded: IntGaugeVec,
    folded_total: IntCounterVec,
    scrape_seconds: Gauge,
    run_seconds: CounterVec,
    runs: IntCounterVec,
    fill: GaugeVec,
    bpf_stats_enabled: Gauge,
    /// Last kernel totals per program, to advance the counters by deltas.
    seen: Mutex<HashMap<String, (Duration, u64)>>,
}

impl SelfMetrics {
    pub fn new(r: &Registry) -> Self {
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let family = &["family"];
        Self {
            folded: reg(r, IntGaugeVec::new(Opts::new("cwatch_series_folded", "Groups folded into the [other] series by the series limit at the last scrape, per family (process, peer)."), family).expect("valid")),
            folded_total: reg(r, IntCounterVec::new(Opts::new("cwatch_series_folded_total", "Groups folded into [other], summed over scrapes, per family."), family).expect("valid")),
            scrape_seconds: reg(r, Gauge::new("cwatch_scrape_duration_seconds", "Time the previous /metrics scrape took to build.").expect("valid")),
            run_seconds: reg(r, CounterVec::new(Opts::new("cwatch_bpf_program_run_seconds_total", "Kernel time spent in this BPF program (counted while kernel.bpf_stats_enabled=1)."), &["program"]).expect("valid")),
            runs: reg(r, IntCounterVec::new(Opts::new("cwatch_bpf_program_runs_total", "Runs of this BPF program (counted while kernel.bpf_stats_enabled=1)."), &["program"]).expect("valid")),
            fill: reg(r, GaugeVec::new(Opts::new("cwatch_map_fill_ratio", "Entries in this BPF map divided by its capacity."), &["map"]).expect("valid")),
            bpf_stats_enabled: reg(r, Gauge::new("cwatch_bpf_stats_enabled", "The kernel.bpf_stats_enabled sysctl (1: program run time and counts are collected; a BPF_ENABLE_STATS holder can also turn counting on without showing here).").expect("valid")),
            seen: Mutex::new(HashMap::new()),
        }
        .init()
    }

    fn init(self) -> Self {
        for family in ["process", "peer"] {
            self.folded.with_label_values(&[family]).set(0);
            self.folded_total.with_label_values(&[family]).inc_by(0);
        }
        self
    }

    pub fn folded(&self, process: usize, peer: usize) {
        for (family, n) in [("process", process), ("peer", peer)] {
            self.folded.with_label_values(&[family]).set(n as i64);
            self.folded_total
                .with_label_values(&[family])
                .inc_by(n as u64);
        }
    }

    pub fn scrape_took(&self, d: Duration) {
        self.scrape_seconds.set(d.as_secs_f64());
    }

    pub fn map_fill(&self, map: &str, entries: usize, capacity: u32) {
        let ratio = if capacity == 0 {
            0.0
        } else {
            entries as f64 / f64::from(capacity)
        };
        self.fill.with_label_values(&[map]).set(ratio);
    }

    /// Advances the per-program counters to the kernel's totals. A program
    /// whose totals went backwards (reloaded) starts over from them.
    /// The programs' kernel totals now; `stats_enabled`: the sysctl's value.
    pub fn programs(&self, stats: &[ProgramStats], stats_enabled: bool) {
        self.bpf_stats_enabled
            .set(f64::from(u8::from(stats_enabled)));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for s in stats {
            let (time0, count0) = seen.get(&s.name).copied().unwrap_or_default();
            let (dt, dc) = if s.run_count < count0 || s.run_time < time0 {
                (s.run_time, s.run_count)
            } else {
                (s.run_time - time0, s.run_count - count0)
            };
            self.run_seconds
                .with_label_values(&[&s.name])
                .inc_by(dt.as_secs_f64());
            self.runs.with_label_values(&[&s.name]).inc_by(dc);
            seen.insert(s.name.clone(), (s.run_time, s.run_count));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_counters_follow_kernel_totals() {
        let r = Registry::new();
        let m = SelfMetrics::new(&r);
        let stats = |t: u64, c: u64| {
            vec![ProgramStats {
                name: "inet_sock_set_state".into(),
                run_time: Duration::from_millis(t),
                run_count: c,
            }]
        };
        m.programs(&stats(500, 10), true);
        m.programs(&stats(1500, 30), true);
        let runs = m.runs.with_label_values(&["inet_sock_set_state"]).get();
        let secs = m
            .run_seconds
            .with_label_values(&["inet_sock_set_state"])
            .get();
        assert_eq!(runs, 30);
        assert!((secs - 1.5).abs() < 1e-9, "{secs}");
        m.map_fill("close_wait", 25, 100);
        m.folded(3, 0);
        m.folded(2, 1);
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            text.contains("cwatch_map_fill_ratio{map=\"close_wait\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("cwatch_series_folded{family=\"process\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("cwatch_series_folded_total{family=\"process\"} 5"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
