/*!
How close each leaking process is to running out of file descriptors:
`cwatch_process_open_fds{pid,comm}` and `cwatch_process_max_fds{pid,comm}`
(its soft `RLIMIT_NOFILE`), for the processes that have a per-process
series of their own (sockets in CLOSE_WAIT, within `--max-process-series`)
or hold dead sockets — the processes whose leak eats their fds. Series that
stand for many processes (`pid="*"`: `--process-key comm|unit`, the folded
`[other]`) have no fd limit of their own and get none.

Read at scrape time through [`ProcRoot`], for at most `--max-process-series`
processes: per process one `stat` of `/proc/<pid>/fd` (its size is the fd
count on Linux 6.2 and newer; older kernels list the directory instead),
one `statfs` and one read of `/proc/<pid>/limits` — measured here at about
8 µs per process whatever its fd count (a listing costs about 0.5 µs per
fd). A process that exits meanwhile is left out of that scrape.
*/
use std::sync::Mutex;

use prometheus::{Encoder as _, IntGaugeVec, Opts, Registry, TextEncoder};

use super::series::Families;
use crate::{owners::ProcRoot, telemetry::register};

/// The two gauge families, in a registry of their own.
pub struct FdGauges {
    registry: Registry,
    open: IntGaugeVec,
    max: IntGaugeVec,
    /// Serialises scrapes: each one resets and refills the gauges.
    scrape: Mutex<()>,
}

/// The processes whose fds are read: (pid, comm) of each per-process series
/// that names one process, then of each process holding dead sockets, at
/// most `limit` in all (0: no limit).
pub fn holders(families: &Families, limit: usize) -> Vec<(u32, String)> {
    let mut dead: Vec<&(Vec<String>, u64)> = families.dead.iter().collect();
    dead.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let labels = families
        .process
        .iter()
        .map(|s| &s.labels)
        .chain(dead.into_iter().map(|(labels, _)| labels));
    let mut out: Vec<(u32, String)> = Vec::new();
    for labels in labels {
        let (Some(pid), Some(comm)) = (labels.first(), labels.get(1)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if out.iter().any(|(p, _)| *p == pid) {
            continue;
        }
        if limit != 0 && out.len() >= limit {
            break;
        }
        out.push((pid, comm.clone()));
    }
    out
}

impl FdGauges {
    pub fn new() -> Self {
        let registry = Registry::new();
        let labels = &["pid", "comm"];
        let open = IntGaugeVec::new(
            Opts::new(
                "cwatch_process_open_fds",
                "File descriptors this process has open (processes holding CLOSE_WAIT or dead sockets).",
            ),
            labels,
        )
        .expect("valid gauge");
        let max = IntGaugeVec::new(
            Opts::new(
                "cwatch_process_max_fds",
                "This process's soft RLIMIT_NOFILE (Max open files in /proc/<pid>/limits; absent when unlimited).",
            ),
            labels,
        )
        .expect("valid gauge");
        Self {
            open: register(&registry, open),
            max: register(&registry, max),
            registry,
            scrape: Mutex::new(()),
        }
    }

    /// Reads the open fds and the limit of each of `holders` and renders
    /// both families in the text format. A process whose fds or limits
    /// cannot be read (gone, or refused) is left out.
    pub fn render(&self, proc: &ProcRoot, holders: &[(u32, String)]) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.open.reset();
        self.max.reset();
        for (pid, comm) in holders {
            let (open, max) = match (proc.open_fds(*pid), proc.max_fds(*pid)) {
                (Ok(open), Ok(max)) => (open, max),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::debug!(pid, "fds of a leaking process: {err}");
                    continue;
                }
            };
            let labels = [pid.to_string(), comm.clone()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            self.open
                .with_label_values(&labels)
                .set(i64::try_from(open).unwrap_or(i64::MAX));
            // Linux refuses an unlimited RLIMIT_NOFILE (it is capped by
            // fs.nr_open); should a limits file say so, there is no limit
            // to forecast against.
            if let Some(max) = max {
                self.max
                    .with_label_values(&labels)
                    .set(i64::try_from(max).unwrap_or(i64::MAX));
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for FdGauges {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::cardinality::Series, owners::procfs::fixture::FakeProc, table::GroupStats,
    };

    fn series(pid: &str, comm: &str, sockets: u64) -> Series {
        Series {
            labels: vec![pid.into(), comm.into()],
            stats: GroupStats {
                sockets,
                ..GroupStats::default()
            },
        }
    }

    fn families() -> Families {
        Families {
            process: vec![
                series("10", "order-svc", 360),
                series("", "[unknown]", 4),
                series("*", "[other]", 12),
                series("11", "worker", 2),
            ],
            dead: vec![
                (vec!["12".into(), "reaped".into()], 3),
                (vec!["10".into(), "order-svc".into()], 1),
                (vec!["13".into(), "more".into()], 9),
            ],
            ..Families::default()
        }
    }

    #[test]
    fn one_process_per_series_that_names_one_within_the_limit() {
        let f = families();
        let pids = |limit| -> Vec<u32> { holders(&f, limit).iter().map(|h| h.0).collect() };
        // pid "" and "*" stand for no single process; 10 holds both kinds.
        assert_eq!(pids(0), vec![10, 11, 13, 12]);
        assert_eq!(
            pids(3),
            vec![10, 11, 13],
            "live series first, then most dead"
        );
        assert_eq!(pids(1), vec![10]);
        assert_eq!(holders(&f, 0)[0].1, "order-svc");
    }

    #[test]
    fn renders_fds_and_limits_and_skips_what_is_gone() {
        let mut proc = FakeProc::new();
        proc.process(10, 1, "order-svc")
            .socket(3, 500)
            .socket(4, 501)
            .file(0)
            .nofile("1024", "4096");
        proc.process(11, 1, "worker")
            .file(0)
            .nofile("unlimited", "unlimited");
        let gauges = FdGauges::new();
        let holders = holders(&families(), 0);
        let text = gauges.render(&proc.root(), &holders);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            vec![
                "cwatch_process_max_fds{comm=\"order-svc\",pid=\"10\"} 1024",
                "cwatch_process_open_fds{comm=\"order-svc\",pid=\"10\"} 3",
                "cwatch_process_open_fds{comm=\"worker\",pid=\"11\"} 1",
            ],
            "{text}"
        );
        // Process 11 exits: its series goes at the next scrape.
        proc.exit(11);
        let text = gauges.render(&proc.root(), &holders);
        assert!(!text.contains("pid=\"11\""), "{text}");
        assert!(text.contains("cwatch_process_open_fds{comm=\"order-svc\",pid=\"10\"} 3"));
    }
}
