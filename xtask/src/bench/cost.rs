//! Section 1, kernel cost per event: the average run time of each cwatch
//! program (kernel.bpf_stats_enabled=1: run_time_ns / run_cnt, read from the
//! daemon's own program fds) under loopback connect/accept/close churn, with
//! a bpftrace one-liner and an empty bpftrace program on the same tracepoint
//! attached in the same run. The empty program shows the floor: what the
//! statistics themselves (two clock reads per run) and the call cost on this
//! machine, whatever a program does. The cost per connection adds up every
//! run of an owner's programs: that is what the churn pays.
use std::collections::BTreeMap;

use super::{
    Plan,
    daemon::BenchDaemon,
    procs,
    stats::Samples,
    system::{self, ProgStats, Sysctl},
};

/// The bpftrace one-liner compared against: CLOSE_WAIT transitions per
/// process, the incident's question asked the quick way.
pub const BPFTRACE_ONE_LINER: &str =
    "tracepoint:sock:inet_sock_set_state /args->newstate == 8/ { @[comm] = count(); }";

/// A program that does nothing, on the same tracepoint: the floor.
pub const BPFTRACE_EMPTY: &str = "tracepoint:sock:inet_sock_set_state { }";

/// Owner label of the empty program's row.
pub const EMPTY_OWNER: &str = "empty program (bpftrace)";

/// One program's cost over the rounds.
#[derive(Debug)]
pub struct ProgCost {
    pub owner: &'static str,
    pub name: String,
    pub ns_per_run: Samples,
    /// Run time of this program per connection of the churn.
    pub ns_per_conn: Samples,
    pub runs: u64,
}

pub fn run(plan: &Plan, bins: &procs::Bins) -> anyhow::Result<Vec<ProgCost>> {
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
    let bpftrace = procs::bpftrace(BPFTRACE_ONE_LINER)?;
    let empty = procs::bpftrace(BPFTRACE_EMPTY)?;
    let owners = [
        ("cwatch", daemon.pid),
        ("bpftrace", bpftrace.pid()),
        (EMPTY_OWNER, empty.pid()),
    ];
    let mut costs: BTreeMap<(usize, u32), ProgCost> = BTreeMap::new();
    let secs = format!("{}", plan.workload_secs);
    for round in 0..plan.rounds.min(5) {
        let before: Vec<_> = owners
            .iter()
            .map(|(_, pid)| system::bpf_programs(*pid))
            .collect::<Result<_, _>>()?;
        let run = procs::run_gen(&bins.churn, &["--seconds", &secs])?;
        for (i, (owner, pid)) in owners.iter().enumerate() {
            for (id, after) in system::bpf_programs(*pid)? {
                let was = before[i].get(&id).copied().unwrap_or_default();
                let delta = ProgStats {
                    run_time_ns: after.run_time_ns - was.run_time_ns,
                    run_cnt: after.run_cnt - was.run_cnt,
                };
                if delta.run_cnt == 0 {
                    continue;
                }
                let cost = costs.entry((i, id)).or_insert_with(|| ProgCost {
                    owner,
                    name: system::bpf_program_name(id),
                    ns_per_run: Samples::default(),
                    ns_per_conn: Samples::default(),
                    runs: 0,
                });
                cost.ns_per_run
                    .push(delta.run_time_ns as f64 / delta.run_cnt as f64);
                cost.ns_per_conn
                    .push(delta.run_time_ns as f64 / run.ops.max(1.0));
                cost.runs += delta.run_cnt;
            }
        }
        eprintln!("bench: cost round {round}: churn {:.0} conn/s", run.rate);
    }
    drop(empty);
    drop(bpftrace);
    daemon.stop()?;
    for cost in costs.values() {
        eprintln!(
            "bench: {} {}: {:.1} ns/run (median of {}, {} runs)",
            cost.owner,
            cost.name,
            cost.ns_per_run.median(),
            cost.ns_per_run.len(),
            cost.runs
        );
    }
    Ok(costs.into_values().collect())
}
