//! Ages and the walk summary: groups by process and peer, leaked and oldest.
use std::time::Duration;

use super::record;
use crate::table::{GroupStats, SockEntry, SocketTable, Summary, age, is_leaked};

const S: u64 = 1_000_000_000;

/// (cookie, start_ns, owner)
type Row<'a> = (u64, u64, Option<(u32, &'a str)>);

fn table(entries: &[Row]) -> SocketTable {
    let mut t = SocketTable::new();
    for &(cookie, start, owner) in entries {
        t.insert(SockEntry::from_record(&record(cookie, start, owner)));
    }
    t
}

#[test]
fn age_is_now_minus_start_and_never_negative() {
    assert_eq!(age(10 * S, 4 * S), Duration::from_secs(6));
    assert_eq!(age(4 * S, 10 * S), Duration::ZERO);
    assert!(is_leaked(
        Duration::from_secs(300),
        Duration::from_secs(300)
    ));
    assert!(!is_leaked(
        Duration::from_millis(299_999),
        Duration::from_secs(300)
    ));
}

#[test]
fn groups_by_process_and_peer_with_leaked_and_oldest() {
    let t = table(&[
        (1, 100 * S, Some((10, "a"))),
        (2, 150 * S, Some((10, "a"))),
        (3, 195 * S, Some((11, "b"))),
        (4, 190 * S, None),
    ]);
    let s = t.summarize_where(200 * S, Duration::from_secs(60), |_| true);
    let a = s
        .processes
        .iter()
        .find(|(k, _)| k.pid == Some(10))
        .unwrap()
        .1;
    assert_eq!(
        *a,
        GroupStats {
            sockets: 2,
            leaked: 1,
            oldest: Duration::from_secs(100)
        }
    );
    let unknown = s.processes.iter().find(|(k, _)| k.pid.is_none()).unwrap();
    assert_eq!(
        (unknown.0.pid_label(), unknown.0.comm_label()),
        (String::new(), "[unknown]".into())
    );
    assert_eq!(unknown.1.sockets, 1);
    // Outbound sockets group by peer port; the inbound one (no owner
    // learned at connect) by "*".
    assert_eq!(s.peers.len(), 2);
    let outbound = s
        .peers
        .iter()
        .find(|(k, _)| k.port == Some(7000))
        .unwrap()
        .1;
    assert_eq!((outbound.sockets, outbound.leaked), (3, 1));
    let inbound = s.peers.iter().find(|(k, _)| k.port.is_none()).unwrap();
    assert_eq!(inbound.0.port_label(), "*");
    assert_eq!(inbound.1.sockets, 1);
    let total: u64 = s.processes.values().map(|g| g.sockets).sum();
    assert_eq!(total, t.len() as u64, "every socket counted once");
}

#[test]
fn empty_table_has_no_series() {
    assert_eq!(
        SocketTable::new().summarize_where(5 * S, Duration::from_secs(1), |_| true),
        Summary::default()
    );
}
