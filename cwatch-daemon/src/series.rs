/*!
From the socket table to the labelled series of the per-process and per-peer
families, as configured: filters applied, optional labels looked up, groups
keyed by pid, comm or unit, then folded to the series limits.
*/
use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use crate::{
    aging::{GroupStats, PeerKey, ProcessKey, Summary, age, is_leaked},
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

fn add(stats: &mut GroupStats, age: Duration, leak_after: Duration) {
    stats.sockets += 1;
    stats.leaked += u64::from(is_leaked(age, leak_after));
    stats.oldest = stats.oldest.max(age);
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

    /// Builds both families for `table` at `now_ns`.
    pub fn build(&mut self, table: &SocketTable, now_ns: u64, config: &Config) -> Families {
        let names = config.labels.label_names().len();
        let mut process: BTreeMap<Vec<String>, GroupStats> = BTreeMap::new();
        let mut peer: BTreeMap<PeerKey, GroupStats> = BTreeMap::new();
        let mut live = HashSet::new();
        for entry in table.iter() {
            if !self.keeps(entry, config) {
                continue;
            }
            let a = age(now_ns, entry.start_ns);
            let labels = self.process_labels(entry, config);
            add(process.entry(labels).or_default(), a, config.leak_after);
            add(
                peer.entry(PeerKey::of(entry)).or_default(),
                a,
                config.leak_after,
            );
            if let Some(o) = entry.owner {
                live.insert(o.pid);
            }
        }
        let mut dead: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for d in table.dead().filter(|d| d.verified) {
            if self.keeps(&d.sock, config) {
                let key = ProcessKey::of(&d.sock);
                *dead
                    .entry(vec![key.pid_label(), key.comm_label()])
                    .or_default() += 1;
                if let Some(o) = d.sock.owner {
                    live.insert(o.pid);
                }
            }
        }
        self.cache.retain(&live);
        let process = process
            .into_iter()
            .map(|(labels, stats)| Series { labels, stats })
            .collect();
        let peer = peer
            .into_iter()
            .map(|(k, stats)| Series {
                labels: vec![k.addr.to_string(), k.port_label()],
                stats,
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

    fn process_labels(&mut self, entry: &SockEntry, config: &Config) -> Vec<String> {
        let key = ProcessKey::of(entry);
        let info = match entry.owner {
            Some(o) if config.labels.needs_proc() => self.cache.get(o.pid).clone(),
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
        let t = table();
        let mut b = SeriesBuilder::default();
        let mut config = Config {
            leak_after: Duration::from_secs(8),
            ..Config::default()
        };
        let f = b.build(&t, 10 * S, &config);
        assert_eq!(f.process.len(), 4);
        assert_eq!(f.peer.len(), 2, "outbound to 127.0.1.1:7000 and inbound *");
        config.labels.process_key = ProcessKeyMode::Comm;
        let f = b.build(&t, 10 * S, &config);
        let a = f.process.iter().find(|s| s.labels[1] == "a").unwrap();
        assert_eq!(a.labels[0], "*");
        assert_eq!((a.stats.sockets, a.stats.leaked), (2, 2));
        let unknown = f.process.iter().find(|s| s.labels[0].is_empty()).unwrap();
        assert_eq!(unknown.labels[1], "[unknown]");

        config.filters.exclude = vec!["comm:a".parse().unwrap()];
        let f = b.build(&t, 10 * S, &config);
        assert_eq!(f.process.iter().map(|s| s.stats.sockets).sum::<u64>(), 2);
    }

    #[test]
    fn folding_keeps_the_family_total() {
        let t = table();
        let mut b = SeriesBuilder::default();
        let mut config = Config {
            max_process_series: 2,
            ..Config::default()
        };
        config.labels.set(&[OwnerLabel::Exe]);
        let f = b.build(&t, 10 * S, &config);
        assert_eq!(f.process.len(), 2);
        assert_eq!(f.folded_process, 3);
        assert_eq!(f.process.iter().map(|s| s.stats.sockets).sum::<u64>(), 4);
        let other = &f.process[1];
        assert_eq!(other.labels, vec!["*", "[other]", ""]);
    }
}
