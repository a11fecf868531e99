//! `cwatch_close_wait_duration_seconds` from the kernel's own per-CPU
//! histogram (`HIST`): the programs add every socket that leaves CLOSE_WAIT
//! whose start they saw, short ones included (the daemon never hears of
//! those), so the family is exact whatever was tracked.
use cwatch_common::hist;
use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};

use crate::probe::KernelHistogram;

pub const NAME: &str = "cwatch_close_wait_duration_seconds";
const HELP: &str = "Time from CLOSE_WAIT to close, for closed sockets whose start was seen.";

/// The family of `totals` (`None` before the probes are loaded: an empty
/// histogram, so the family is always there).
pub fn family(totals: Option<&KernelHistogram>) -> MetricFamily {
    let empty = [0u64; hist::LEN as usize];
    let totals = totals.unwrap_or(&empty);
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(hist::BOUNDS_NS.len());
    for (i, bound) in hist::BOUNDS_NS.iter().enumerate() {
        cumulative += totals[i];
        let mut b = Bucket::default();
        b.set_upper_bound(*bound as f64 / 1e9);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    let count = cumulative + totals[hist::INF as usize];
    let mut h = Histogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(totals[hist::SUM as usize] as f64 / 1e9);
    h.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_histogram(h);
    let mut f = MetricFamily::default();
    f.set_name(NAME.to_string());
    f.set_help(HELP.to_string());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(vec![m]);
    f
}
