//! Kernel cost per event: the average run time of each BPF program
//! (kernel.bpf_stats_enabled=1: run_time_ns / run_cnt, read from the owners'
//! program fds) under each churn shape (`churn`), with cwatch, a bpftrace
//! one-liner, empty bpftrace programs on the tracepoints cwatch uses
//! (`inet_sock_set_state`, `tcp_destroy_sock`) and empty programs attached
//! as cwatch's are (`cwatch-floor`) all attached in the same run, the shapes
//! taking turns in every round. The empty programs show the floor: what the
//! statistics themselves (two clock reads per run) and the call cost on this
//! machine, whatever a program does. The cost per
//! connection adds up every run of an owner's programs: that is what the
//! churn pays.
use std::{collections::BTreeMap, fmt::Write as _};

use cwatch_testkit::churn::{self, Churn};

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

/// Programs that do nothing, on the tracepoints cwatch attaches: the floor.
pub const BPFTRACE_EMPTY: &str =
    "tracepoint:sock:inet_sock_set_state { } tracepoint:tcp:tcp_destroy_sock { }";

pub const CWATCH: &str = "cwatch";
pub const ONE_LINER: &str = "bpftrace one-liner";
/// Owner label of the empty programs' rows.
pub const EMPTY_OWNER: &str = "empty program (bpftrace)";
/// Owner label of `cwatch-floor`'s rows: empty programs run as cwatch's.
pub const FLOOR_OWNER: &str = "empty program (cwatch-floor)";

/// One program's cost over the rounds of one churn shape.
#[derive(Debug)]
pub struct ProgCost {
    pub owner: &'static str,
    pub name: String,
    pub ns_per_run: Samples,
    /// Run time of this program per connection of the churn.
    pub ns_per_conn: Samples,
    /// Runs per connection of the churn.
    pub runs_per_conn: Samples,
    pub runs: u64,
}

/// Every program's cost under one churn shape.
#[derive(Debug)]
pub struct ShapeCost {
    pub shape: Churn,
    pub progs: Vec<ProgCost>,
}

impl ShapeCost {
    /// All of `owner`'s programs together, ns per connection (sum of the
    /// medians).
    pub fn ns_per_conn(&self, owner: &str) -> f64 {
        self.progs
            .iter()
            .filter(|c| c.owner == owner)
            .map(|c| c.ns_per_conn.median())
            .fold(0.0, |a, b| a + b)
    }

    /// `owner`'s program on `tracepoint`, if it has one.
    pub fn prog(&self, owner: &str, tracepoint: &str) -> Option<&ProgCost> {
        self.progs
            .iter()
            .find(|c| c.owner == owner && tracepoint_of(&c.name) == Some(tracepoint))
    }

    /// ns per run of cwatch's program on `tracepoint` above the empty
    /// program's on the same tracepoint (medians).
    pub fn above_empty(&self, tracepoint: &str) -> Option<f64> {
        let cwatch = self.prog(CWATCH, tracepoint)?.ns_per_run.median();
        let empty = self.prog(EMPTY_OWNER, tracepoint)?.ns_per_run.median();
        Some(cwatch - empty)
    }
}

/// The tracepoint a program runs on, from its name (the kernel keeps 15
/// characters of it: `inet_sock_set_s`).
pub fn tracepoint_of(name: &str) -> Option<&'static str> {
    if name.starts_with("inet_sock_set") {
        Some("inet_sock_set_state")
    } else if name.starts_with("tcp_destroy") {
        Some("tcp_destroy_sock")
    } else {
        None
    }
}

pub fn run(plan: &Plan, bins: &procs::Bins) -> anyhow::Result<Vec<ShapeCost>> {
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let daemon = BenchDaemon::start(&bins.cwatch, &[])?;
    let one_liner = procs::bpftrace(BPFTRACE_ONE_LINER)?;
    let empty = procs::bpftrace(BPFTRACE_EMPTY)?;
    let floor = procs::floor(&bins.floor)?;
    daemon.settle()?;
    let owners = [
        (CWATCH, daemon.pid),
        (ONE_LINER, one_liner.pid()),
        (EMPTY_OWNER, empty.pid()),
        (FLOOR_OWNER, floor.pid()),
    ];
    let mut costs: Vec<BTreeMap<(usize, u32), ProgCost>> =
        churn::ALL.iter().map(|_| BTreeMap::new()).collect();
    for round in 0..plan.cost_rounds {
        for (shape, costs) in churn::ALL.iter().zip(costs.iter_mut()) {
            let before: Vec<_> = owners
                .iter()
                .map(|(_, pid)| system::bpf_programs(*pid))
                .collect::<Result<_, _>>()?;
            let run = procs::churn(&bins.churn, *shape, plan.workload_secs)?;
            let conns = run.ops.max(1.0);
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
                        runs_per_conn: Samples::default(),
                        runs: 0,
                    });
                    cost.ns_per_run
                        .push(delta.run_time_ns as f64 / delta.run_cnt as f64);
                    cost.ns_per_conn.push(delta.run_time_ns as f64 / conns);
                    cost.runs_per_conn.push(delta.run_cnt as f64 / conns);
                    cost.runs += delta.run_cnt;
                }
            }
            eprintln!(
                "bench: cost round {round}: churn {} {:.0} conn/s",
                shape.name, run.rate
            );
        }
    }
    drop(floor);
    drop(empty);
    drop(one_liner);
    daemon.stop()?;
    let shapes: Vec<ShapeCost> = churn::ALL
        .into_iter()
        .zip(costs)
        .map(|(shape, costs)| ShapeCost {
            shape,
            progs: costs.into_values().collect(),
        })
        .collect();
    for s in &shapes {
        for c in &s.progs {
            eprintln!(
                "bench: {} churn, {} {}: {:.1} ns/run, {:.0} ns/conn (median of {}, {} runs)",
                s.shape.name,
                c.owner,
                c.name,
                c.ns_per_run.median(),
                c.ns_per_conn.median(),
                c.ns_per_run.len(),
                c.runs
            );
        }
    }
    Ok(shapes)
}

/// The section of RESULTS.md.
pub fn render(shapes: &[ShapeCost], s: &mut String) {
    let _ = writeln!(
        s,
        "kernel.bpf_stats_enabled=1 (restored after), run_time_ns / run_cnt under \
         `cwatch-churn` in each shape, with cwatch, the bpftrace one-liner `{BPFTRACE_ONE_LINER}` \
         , the empty bpftrace programs `{BPFTRACE_EMPTY}` and `cwatch-floor`'s empty programs \
         (`r0 = 0; exit`, attached through the raw tracepoint call that cwatch's `tp_btf` \
         programs take) attached in the same run, the shapes taking turns in every round. \
         The empty programs are the floor on this machine: the statistics' own two clock \
         reads and the call, whatever a program does (bpftrace's are `tracepoint` programs; \
         the statistics time only the program). \"Above the empty program\" is against \
         bpftrace's, as the target has always been judged. ns/connection is the program's run time per connection of the churn; \
         runs/connection how often it ran."
    );
    for shape in shapes {
        let _ = writeln!(
            s,
            "\n### Churn {}\n\n\
             | owner | program | ns/run (median) | min–max | above the empty program | ns/connection (median) | runs/connection | runs |\n\
             |---|---|---|---|---|---|---|---|",
            shape.shape.what
        );
        for c in &shape.progs {
            let n = &c.ns_per_run;
            let above = match tracepoint_of(&c.name) {
                Some(tp) if c.owner != EMPTY_OWNER => {
                    shape.prog(EMPTY_OWNER, tp).map_or("—".into(), |e| {
                        format!("{:+.1}", n.median() - e.ns_per_run.median())
                    })
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1}–{:.1} | {above} | {:.0} | {:.2} | {} |",
                c.owner,
                c.name,
                n.median(),
                n.min(),
                n.max(),
                c.ns_per_conn.median(),
                c.runs_per_conn.median(),
                c.runs
            );
        }
        let _ = writeln!(
            s,
            "\nPer connection: cwatch {:.0} ns, the one-liner {:.0} ns, the empty programs {:.0} ns \
             (bpftrace), {:.0} ns (`cwatch-floor`).",
            shape.ns_per_conn(CWATCH),
            shape.ns_per_conn(ONE_LINER),
            shape.ns_per_conn(EMPTY_OWNER),
            shape.ns_per_conn(FLOOR_OWNER)
        );
    }
}
