/*!
From the socket table to what Prometheus and the journal read: [`series`]
(filters applied, owner labels looked up, groups keyed by pid, comm or
unit), [`cardinality`] (folding to the series limits), [`metrics`] (the
contract's families, rendered with the stages' telemetry),
[`selfmetrics`] (what a scrape learns about cwatch itself), [`fds`]
(open fds and fd limits of the leaking processes), [`reaped`] (the
sockets `cwatch reap` reported destroying, checked) and [`sites`] (leaked
sockets by the code that opened them).

The [`Exporter`] owns the registry and the label cache. A scrape takes the
table's lock only to read the groups (no I/O under it), then looks up labels
(through the label reader thread, in the daemon) and reads the kernel's
counters with the lock released.
*/
pub mod cardinality;
pub mod fds;
mod histogram;
pub mod metrics;
pub mod reaped;
pub mod selfmetrics;
pub mod series;
pub mod sites;

use std::{sync::Arc, time::Instant};

use metrics::Metrics;
pub use series::{Families, Filter};

use crate::{
    config::Config,
    owners::{
        ProcRoot,
        labels::{LabelCache, LabelLookups},
    },
    state::State,
};

/// Renders `/metrics` and the families the leak notices read.
pub struct Exporter {
    metrics: Metrics,
    fds: fds::FdGauges,
    /// `cwatch_reaped_sockets_total` and the cookies it counted.
    pub reaped: reaped::Reaped,
    labels: LabelCache,
    proc: ProcRoot,
}

impl Exporter {
    pub fn new(proc: ProcRoot) -> Self {
        Self {
            metrics: Metrics::new(),
            fds: fds::FdGauges::new(),
            reaped: reaped::Reaped::new(),
            labels: LabelCache::new(proc.clone()),
            proc,
        }
    }

    /// An exporter whose owner labels are read by the thread behind
    /// `reader` (the scrape threads hold no capability to read them).
    pub fn with_label_reader(proc: ProcRoot, reader: LabelLookups) -> Self {
        Self {
            metrics: Metrics::new(),
            fds: fds::FdGauges::new(),
            reaped: reaped::Reaped::new(),
            labels: LabelCache::reading_through(proc.clone(), reader),
            proc,
        }
    }

    /// The configured filters for the table now (owners' units looked up
    /// when a rule needs them).
    pub fn filter(&self, state: &State, config: Arc<Config>) -> Filter {
        Filter::new(state, config, &self.labels)
    }

    /// The per-process and per-peer series as configured, now.
    pub fn families(&self, state: &State) -> Families {
        self.families_at(state, state.clock.now_ns())
    }

    /// The per-process and per-peer series at `now` (a clock reading).
    fn families_at(&self, state: &State, now: u64) -> Families {
        let config = state.config();
        let filter = self.filter(state, Arc::clone(&config));
        let summary = series::summary(&mut state.lock_table(), now, &filter);
        series::families(&summary, &config, &self.labels)
    }

    /// The /metrics text; `started` is when the scrape began.
    pub fn render(&self, state: &State, started: Instant) -> String {
        let config = state.config();
        // One instant for every family, so that the site series sum to the
        // per-process leaked gauges.
        let now = state.clock.now_ns();
        let families = self.families_at(state, now);
        let probes = state.probes();
        let kernel = probes.as_ref().and_then(|p| match p.counter_totals() {
            Ok(counters) => Some(metrics::Kernel {
                counters,
                histogram: p
                    .histogram()
                    .inspect_err(|err| tracing::warn!("reading the kernel's histogram: {err}"))
                    .ok(),
            }),
            Err(err) => {
                tracing::warn!("reading kernel counters: {err}");
                state
                    .telemetry
                    .source_failed(crate::telemetry::Source::KernelCounters);
                None
            }
        });
        if let Some(probes) = &probes {
            let table_len = state.lock_table().len();
            self.metrics
                .own
                .programs(&probes.program_stats(), self.bpf_stats_enabled());
            self.metrics
                .own
                .map_fill("close_wait", table_len, probes.close_wait_capacity());
        }
        let mut body = self.metrics.render_families(
            &families,
            &config.labels.label_names(),
            kernel.as_ref(),
            &state.telemetry,
        );
        let holders = fds::holders(&families, config.max_process_series);
        body += &self.fds.render(&self.proc, &holders);
        body += &self.reaped.render();
        if config.stack_samples > 0 {
            let filter = self.filter(state, Arc::clone(&config));
            let leaked: u64 = families.process.iter().map(|s| s.stats.leaked).sum();
            let counts = sites::count(&state.lock_table(), now, &filter, &state.sites, leaked);
            body += &sites::render(counts, config.max_site_series);
        }
        self.metrics.own.scrape_took(started.elapsed());
        body
    }

    /// Whether the kernel now counts BPF program run time (sysctl).
    fn bpf_stats_enabled(&self) -> bool {
        std::fs::read_to_string(self.proc.path("sys/kernel/bpf_stats_enabled"))
            .is_ok_and(|v| v.trim() == "1")
    }
}

#[cfg(test)]
mod tests;
