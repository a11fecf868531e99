/*!
From the socket table to the labelled series of the per-process and per-peer
families, as configured: filters applied, optional labels looked up, groups
keyed by pid, comm or unit, then folded to the series limits.
*/
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use super::cardinality::{Series, fold};
use crate::{
    config::{Config, filters::OwnerView, labels::ProcessKeyMode},
    owners::labels::{LabelCache, OwnerInfo},
    state::State,
    table::{GroupStats, ProcessKey, SockEntry, SocketTable, Summary},
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

/// Adds one group's numbers to a series that other groups share.
fn merge(into: &mut GroupStats, stats: &GroupStats) {
    into.sockets += stats.sockets;
    into.leaked += stats.leaked;
    into.oldest = into.oldest.max(stats.oldest);
}

/// The configured include/exclude filters, with the owners' units looked up
/// beforehand when a rule needs them, so that filtering under the table's
/// lock reads nothing from `/proc`.
pub struct Filter {
    config: Arc<Config>,
    units: HashMap<u32, Arc<OwnerInfo>>,
}

impl Filter {
    /// The filter of `config` for the sockets of `table` (units of their
    /// owners read from `labels` when a rule needs them: call it with the
    /// table's lock released).
    pub fn new(state: &State, config: Arc<Config>, labels: &LabelCache) -> Self {
        let units = if config.filters.needs_unit() {
            let pids: HashSet<u32> = {
                let table = state.lock_table();
                let dead: Vec<u32> = table
                    .dead()
                    .filter_map(|d| d.sock.owner.map(|o| o.pid))
                    .collect();
                table
                    .iter()
                    .filter_map(|e| e.owner.map(|o| o.pid))
                    .chain(dead)
                    .collect()
            };
            labels.lookup(pids)
        } else {
            HashMap::new()
        };
        Self::with_units(config, units)
    }

    /// The filter of `config` with the owners' units already known.
    pub fn with_units(config: Arc<Config>, units: HashMap<u32, Arc<OwnerInfo>>) -> Self {
        Self { config, units }
    }

    /// Whether no filter is configured (every socket passes).
    pub fn is_empty(&self) -> bool {
        self.config.filters.is_empty()
    }

    /// The leak-after of the configuration this filter was made for.
    pub fn leak_after(&self) -> std::time::Duration {
        self.config.leak_after
    }

    /// Whether `entry` passes the configured filters.
    pub fn keeps(&self, entry: &SockEntry) -> bool {
        let filters = &self.config.filters;
        if filters.is_empty() {
            return true;
        }
        let comm = entry.owner.map(|o| o.comm.as_str().into_owned());
        let unit = entry
            .owner
            .and_then(|o| self.units.get(&o.pid))
            .and_then(|info| info.unit.as_deref());
        filters.keeps(
            entry,
            OwnerView {
                comm: comm.as_deref(),
                unit,
            },
        )
    }
}

/// The summary of `table` at `now_ns` as `filter` keeps it: from the groups
/// the table keeps up to date without filters, by a walk with them.
pub fn summary(table: &mut SocketTable, now_ns: u64, filter: &Filter) -> Summary {
    let leak_after = filter.config.leak_after;
    if filter.config.filters.is_empty() {
        table.summary(now_ns, leak_after)
    } else {
        table.summarize_where(now_ns, leak_after, |e| filter.keeps(e))
    }
}

/// Labels the groups of `summary` as configured (looking up optional labels
/// in `labels`), merging groups that get the same labels, then folds each
/// family to its series limit.
pub fn families(summary: &Summary, config: &Config, labels: &LabelCache) -> Families {
    let names = config.labels.label_names().len();
    let info = if config.labels.needs_proc() {
        labels.lookup(summary.processes.keys().filter_map(|k| k.pid))
    } else {
        HashMap::new()
    };
    let mut process: BTreeMap<Vec<String>, GroupStats> = BTreeMap::new();
    let mut live = HashSet::new();
    for (key, stats) in &summary.processes {
        let labels = process_labels(key, config, &info);
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
    labels.retain(&live);
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

fn process_labels(
    key: &ProcessKey,
    config: &Config,
    info: &HashMap<u32, Arc<OwnerInfo>>,
) -> Vec<String> {
    let none = OwnerInfo::default();
    let info = key.pid.and_then(|p| info.get(&p)).map_or(&none, |i| &**i);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::labels::OwnerLabel, owners::procfs::fixture::FakeProc, table::tests::record,
    };

    const S: u64 = 1_000_000_000;

    /// Both families for `t` at `now_ns`, labels from an empty `/proc`.
    fn build(t: &mut SocketTable, now_ns: u64, config: &Config) -> Families {
        let proc = FakeProc::new();
        let labels = LabelCache::new(proc.root());
        let filter = Filter::with_units(Arc::new(config.clone()), HashMap::new());
        families(&summary(t, now_ns, &filter), config, &labels)
    }

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
        let mut config = Config {
            leak_after: Duration::from_secs(8),
            ..Config::default()
        };
        let f = build(&mut t, 10 * S, &config);
        assert_eq!(f.process.len(), 4);
        assert_eq!(f.peer.len(), 2, "outbound to 127.0.1.1:7000 and inbound *");
        config.labels.process_key = ProcessKeyMode::Comm;
        let f = build(&mut t, 10 * S, &config);
        let a = f.process.iter().find(|s| s.labels[1] == "a").unwrap();
        assert_eq!(a.labels[0], "*");
        assert_eq!((a.stats.sockets, a.stats.leaked), (2, 2));
        let unknown = f.process.iter().find(|s| s.labels[0].is_empty()).unwrap();
        assert_eq!(unknown.labels[1], "[unknown]");

        config.filters.exclude = vec!["comm:a".parse().unwrap()];
        let f = build(&mut t, 10 * S, &config);
        assert_eq!(f.process.iter().map(|s| s.stats.sockets).sum::<u64>(), 2);
    }

    #[test]
    fn folding_keeps_the_family_total() {
        let mut t = table();
        let mut config = Config {
            max_process_series: 2,
            ..Config::default()
        };
        config.labels.set(&[OwnerLabel::Exe]);
        let f = build(&mut t, 10 * S, &config);
        assert_eq!(f.process.len(), 2);
        assert_eq!(f.folded_process, 3);
        assert_eq!(f.process.iter().map(|s| s.stats.sockets).sum::<u64>(), 4);
        let other = &f.process[1];
        assert_eq!(other.labels, vec!["*", "[other]", ""]);
    }
}
