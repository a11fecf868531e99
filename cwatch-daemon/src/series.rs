/*!
From the socket table to the labelled series of the per-process and per-peer
families, as configured: filters applied, optional labels looked up, groups
keyed by pid, comm or unit, then folded to the series limits.
*/
use std::collections::{BTreeMap, HashSet};

use crate::{
    aging::{GroupStats, ProcessKey, Summary, summarize_where},
    cardinality::{Series, fold},
    config::Config,
    filters::OwnerView,
    labels::{LabelCache, OwnerInfo, ProcessKeyMode},
    table::{SockEntry, SocketTable},
};

/// The two families' series at one instant.
#[derive(Debug, Default)]
pub struct Families {
    pub process: Vec<Series>,
    pub peer: Vec<Series>,
    /// `cwatch_process_dead_sockets_held`: (pid, comm) → count. Never
    /// folded: only processes holding fds of closed sockets appear.
    pub dead: Vec<(Vec<String>, u64)>,
    /// Groups folded into `[other]`, per family.
    pub folded_process: usize,
    pub folded_peer: usize,
}

impl Families {
    /// The contract's plain view of a [`Summary`]: pid/comm labels, no limit.
    pub fn from_summary(summary: &Summary) -> Self {
        Self {
            process: summary
                .processes
                .iter()
                .map(|(k, stats)| Series {
                    labels: vec![k.pid_label(), k.comm_label()],
                    stats: *stats,
                })
                .collect(),
            peer: summary
                .peers
                .iter()
                .map(|(k, stats)| Series {
                    labels: vec![k.addr.to_string(), k.port_label()],
                    stats: *stats,
                })
                .collect(),
            dead: summary
                .dead
                .iter()
                .map(|(k, n)| (vec![k.pid_label(), k.comm_label()], *n))
                .collect(),
            folded_process: 0,
            folded_peer: 0,
        }
    }
}

/// Owns the /proc label cache across scrapes.
#[derive(Default)]
pub struct SeriesBuilder {
    cache: LabelCache,
}

/// Adds one group's numbers to a series that other groups share.
fn merge(into: &mut GroupStats, stats: &GroupStats) {
    into.sockets += stats.sockets;
    into.leaked += stats.leaked;
    into.oldest = into.oldest.max(stats.oldest);
}

impl SeriesBuilder {
    /// Whether `entry` passes the configured filters.
    pub fn keeps(&mut self, entry: &SockEntry, config: &Config) -> bool {
        if config.filters.is_empty() {
            return true;
        }
        let comm = entry.owner.map(|o| o.comm.as_str().into_owned());
        let unit = match (config.filters.needs_unit(), entry.owner) {
            (true, Some(o)) => self.cache.get(o.pid).unit.clone(),
            _ => None,
        };
        config.filters.keeps(
            entry,
            OwnerView {
                comm: comm.as_deref(),
                unit: unit.as_deref(),
            },
        )
    }

    /// Builds both families for `table` at `now_ns`. Without filters the
    /// numbers come from the groups the table keeps up to date; filters
    /// look at every socket.
    pub fn build(&mut self, table: &mut SocketTable, now_ns: u64, config: &Config) -> Families {
        let summary = if config.filters.is_empty() {
            table.summary(now_ns, config.leak_after)
        } else {
            summarize_where(table, now_ns, config.leak_after, |e| self.keeps(e, config))
        };
        self.families(&summary, config)
    }

    /// Labels the groups of `summary` as configured, merging groups that
    /// get the same labels, then folds each family to its series limit.
    fn families(&mut self, summary: &Summary, config: &Config) -> Families {
        let names = config.labels.label_names().len();
        let mut process: BTreeMap<Vec<String>, GroupStats> = BTreeMap::new();
        let mut live = HashSet::new();
        for (key, stats) in &summary.processes {
            let labels = self.process_labels(key, config);
            merge(process.entry(labels).or_default(), stats);
            live.extend(key.pid);
        }
        let mut dead: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for (key, n) in &summary.dead {
            *dead
                .entry(vec![key.pid_label(), key.comm_label()])
                .or_default() += n;
            live.extend(key.pid);
        }
        self.cache.retain(&live);
        let process = process
            .into_iter()
            .map(|(labels, stats)| Series { labels, stats })
            .collect();
        let peer = summary
            .peers
            .iter()
            .map(|(k, stats)| Series {
                labels: vec![k.addr.to_string(), k.port_label()],
                stats: *stats,
            })
            .collect();
        let mut other_process = vec!["*".to_string(), "[other]".to_string()];
        other_process.resize(names, String::new());
        let (process, folded_process) = fold(process, config.max_process_series, other_process);
        let (peer, folded_peer) = fold(
            peer,
            config.max_peer_series,
            vec!["[other]".into(), "*".into()],
        );
        Families {
            process,
            peer,
            dead: dead.into_iter().collect(),
            folded_process,
            folded_peer,
        }
    }

    fn process_labels(&mut self, key: &ProcessKey, config: &Config) -> Vec<String> {
        let info = match key.pid {
            Some(pid) if config.labels.needs_proc() => self.cache.get(pid).clone(),
            _ => OwnerInfo::default(),
        };
        let mut labels = Vec::with_capacity(2);
        let known = key.pid.is_some();
        match config.labels.process_key {
            ProcessKeyMode::Pid => labels.extend([key.pid_label(), key.comm_label()]),
            ProcessKeyMode::Comm if known => labels.extend(["*".into(), key.comm_label()]),
            ProcessKeyMode::Unit if known => labels.extend(["*".into(), "*".into()]),
            _ => labels.extend([String::new(), key.comm_label()]),
        }
        for label in config.labels.extra_labels() {
            labels.push(info.get(label).to_string());
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{labels::OwnerLabel, table::tests::record};

    const S: u64 = 1_000_000_000;

    fn table() -> SocketTable {
        let mut t = SocketTable::new();
        for (cookie, pid, comm) in [(1, 10, "a"), (2, 11, "a"), (3, 12, "b"), (4, 0, "")] {
            let owner = (pid != 0).then_some((pid, comm));
            t.insert(SockEntry::from_record(&record(cookie, cookie * S, owner)));
        }
        t
    }

    #[test]
    fn keyed_by_pid_comm_and_filtered() {
        let mut t = table();
        let mut b = SeriesBuilder::default();
        let mut config = Config {
            leak_after: Duration::from_secs(8),
            ..Config::default()
        };
        let f = b.build(&mut t, 10 * S, &config);
        assert_eq!(f.process.len(), 4);
        assert_eq!(f.peer.len(), 2, "outbound to 127.0.1.1:7000 and inbound *");
        config.labels.process_key = ProcessKeyMode::Comm;
        let f = b.build(&mut t, 10 * S, &config);
        let a = f.process.iter().find(|s| s.labels[1] == "a").unwrap();
        assert_eq!(a.labels[0], "*");
        assert_eq!((a.stats.sockets, a.stats.leaked), (2, 2));
        let unknown = f.process.iter().find(|s| s.labels[0].is_empty()).unwrap();
        assert_eq!(unknown.labels[1], "[unknown]");

        config.filters.exclude = vec!["comm:a".parse().unwrap()];
        let f = b.build(&mut t, 10 * S, &config);
        assert_eq!(f.process.iter().map(|s| s.stats.sockets).sum::<u64>(), 2);
    }

    #[test]
    fn folding_keeps_the_family_total() {
        let mut t = table();
        let mut b = SeriesBuilder::default();
        let mut config = Config {
            max_process_series: 2,
            ..Config::default()
        };
        config.labels.set(&[OwnerLabel::Exe]);
        let f = b.build(&mut t, 10 * S, &config);
        assert_eq!(f.process.len(), 2);
        assert_eq!(f.folded_process, 3);
        assert_eq!(f.process.iter().map(|s| s.stats.sockets).sum::<u64>(), 4);
        let other = &f.process[1];
        assert_eq!(other.labels, vec!["*", "[other]", ""]);
    }
}
