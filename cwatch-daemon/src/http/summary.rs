/*!
`GET /api/v1/summary`: what `cwatch ls` prints first — totals, then the
counts per peer and per process. Without a selection (no `pid`, `peer` or
`leaked`) it comes from the groups the table keeps up to date, so it costs
the number of groups, not of sockets; under a selection it counts the
sockets that pass. Dead sockets still held count with their peer and
process, as leaked (they are leaked fds).
*/
use std::collections::BTreeMap;

use super::wire::{ApiSummary, PeerCount, ProcessCount, Selection};
use crate::{
    export::Filter,
    table::{GroupStats, PeerKey, ProcessKey, SockEntry, SocketTable, age, is_leaked},
};

#[derive(Default)]
struct Counts {
    processes: BTreeMap<ProcessKey, (u64, u64)>,
    peers: BTreeMap<PeerKey, (u64, u64)>,
}

impl Counts {
    fn add(&mut self, e: &SockEntry, sockets: u64, leaked: u64) {
        for (s, l) in [
            self.processes.entry(ProcessKey::of(e)).or_default(),
            self.peers.entry(PeerKey::of(e)).or_default(),
        ] {
            *s += sockets;
            *l += leaked;
        }
    }

    fn add_group(
        &mut self,
        p: Option<(&ProcessKey, &GroupStats)>,
        q: Option<(&PeerKey, &GroupStats)>,
    ) {
        if let Some((k, g)) = p {
            let c = self.processes.entry(*k).or_default();
            c.0 += g.sockets;
            c.1 += g.leaked;
        }
        if let Some((k, g)) = q {
            let c = self.peers.entry(*k).or_default();
            c.0 += g.sockets;
            c.1 += g.leaked;
        }
    }
}

/// The summary of `table` at `now_ns` for `selection`, under the configured
/// `filter`.
pub fn summary(
    table: &mut SocketTable,
    now_ns: u64,
    selection: &Selection,
    filter: &Filter,
) -> ApiSummary {
    let leak_after = filter.leak_after();
    let mut out = ApiSummary::default();
    let mut counts = Counts::default();
    if *selection == Selection::default() {
        let s = crate::export::series::summary(table, now_ns, filter);
        for (k, g) in &s.processes {
            out.sockets += g.sockets;
            out.leaked += g.leaked;
            counts.add_group(Some((k, g)), None);
        }
        for (k, g) in &s.peers {
            counts.add_group(None, Some((k, g)));
        }
    } else {
        for e in table.iter() {
            let leaked = is_leaked(age(now_ns, e.start_ns), leak_after);
            if selection.matches(&e, leaked) && filter.keeps(&e) {
                out.sockets += 1;
                out.leaked += u64::from(leaked);
                counts.add(&e, 1, u64::from(leaked));
            }
        }
    }
    for d in table.dead().filter(|d| d.verified) {
        if selection.matches(&d.sock, true) && filter.keeps(&d.sock) {
            out.dead += 1;
            counts.add(&d.sock, 1, 1);
        }
    }
    let mut by_process: Vec<ProcessCount> = counts
        .processes
        .into_iter()
        .map(|(k, (sockets, leaked))| ProcessCount {
            pid: k.pid,
            comm: k.comm.map(|c| c.as_str().into_owned()),
            sockets,
            leaked,
        })
        .collect();
    let mut by_peer: Vec<PeerCount> = counts
        .peers
        .into_iter()
        .map(|(k, (sockets, leaked))| PeerCount {
            peer_addr: k.addr.to_string(),
            peer_port: k.port,
            sockets,
            leaked,
        })
        .collect();
    by_process.sort_by_key(|p| std::cmp::Reverse(p.sockets));
    by_peer.sort_by_key(|p| std::cmp::Reverse(p.sockets));
    out.by_process = by_process;
    out.by_peer = by_peer;
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc, time::Duration};

    use super::*;
    use crate::{
        config::Config,
        table::{DeadEntry, tests::record},
    };

    const S: u64 = 1_000_000_000;

    #[test]
    fn groups_and_selections_count_the_same_and_dead_ones_as_leaked() {
        let mut t = SocketTable::new();
        for (cookie, start, pid) in [(1, S, 10), (2, 50 * S, 10), (3, 60 * S, 11)] {
            t.insert(SockEntry::from_record(&record(
                cookie,
                start,
                Some((pid, "app")),
            )));
        }
        let mut dead = SockEntry::from_record(&record(4, S, Some((11, "app"))));
        dead.holders.clear();
        t.insert_dead(DeadEntry::left(dead.clone(), 2 * S, 7));
        t.verify_dead(4, vec![crate::table::tests::holder(11, 3, "app")]);
        let config = Config {
            leak_after: Duration::from_secs(30),
            ..Config::default()
        };
        let filter = Filter::with_units(Arc::new(config), HashMap::new());
        let all = summary(&mut t, 61 * S, &Selection::default(), &filter);
        assert_eq!((all.sockets, all.leaked, all.dead), (3, 1, 1));
        let p10 = all.by_process.iter().find(|p| p.pid == Some(10)).unwrap();
        assert_eq!((p10.sockets, p10.leaked), (2, 1));
        let p11 = all.by_process.iter().find(|p| p.pid == Some(11)).unwrap();
        assert_eq!(
            (p11.sockets, p11.leaked),
            (2, 1),
            "its dead socket counts, leaked"
        );
        assert_eq!(all.by_peer[0].sockets, 4);
        let pid11 = Selection {
            pid: Some(11),
            ..Selection::default()
        };
        let only = summary(&mut t, 61 * S, &pid11, &filter);
        assert_eq!((only.sockets, only.leaked, only.dead), (1, 0, 1));
        assert_eq!(only.by_process.len(), 1);
    }
}
