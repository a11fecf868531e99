use super::*;
use crate::{kernel_view::sockdiag::DiagSocket, table::tests::record};
use cwatch_common::tcp_state;

const S: u64 = 1_000_000_000;
const NETNS: u32 = 4026531840;

fn diag(cookie: u64, last_ack_ago: Option<u64>) -> DiagSocket {
    DiagSocket {
        cookie,
        state: tcp_state::CLOSE_WAIT as u8,
        local: "127.0.0.1:40000".parse().unwrap(),
        peer: "127.0.1.1:7000".parse().unwrap(),
        inode: 5000 + cookie,
        uid: 0,
        last_ack_recv: last_ack_ago.map(Duration::from_secs),
        keepalive: None,
    }
}

fn view(cookies: &[(u64, Option<u64>)]) -> KernelView {
    let mut v = KernelView::default();
    v.covered.insert(NETNS);
    for &(c, ago) in cookies {
        v.close_wait.insert(c, (diag(c, ago), NETNS));
    }
    v
}

#[test]
fn adds_missing_and_drops_stale_entries() {
    let mut table = SocketTable::new();
    for cookie in [1, 2] {
        table.insert(SockEntry::from_record(&record(cookie, 5 * S, None)));
    }
    let v = view(&[(2, None), (3, Some(40))]);
    let c = sync(
        &mut table,
        &v,
        &HashMap::new(),
        &HashMap::new(),
        100 * S,
        90 * S,
        &mut Suspects::default(),
    );
    assert_eq!((c.added, c.removed), (1, 1));
    let mut cookies: Vec<u64> = table.cookies().collect();
    cookies.sort_unstable();
    assert_eq!(cookies, vec![2, 3]);
    assert_eq!(table.get(2).unwrap().start_ns, 5 * S, "kept as it was");
    let found = table.get(3).unwrap();
    assert!(found.age_estimated);
    assert_eq!(
        found.start_ns,
        60 * S,
        "estimated from the last ACK received"
    );
    assert_eq!(found.inode, 5003);
    let again = sync(
        &mut table,
        &v,
        &HashMap::new(),
        &HashMap::new(),
        100 * S,
        90 * S,
        &mut Suspects::default(),
    );
    assert_eq!(again, Corrections::default(), "idempotent");
}

#[test]
fn the_kernel_map_keeps_true_starts_of_lost_enters() {
    let mut table = SocketTable::new();
    let map: HashMap<u64, SockRecord> = [
        (4, record(4, 10 * S, Some((9, "k")))),
        (5, record(5, 99 * S, None)),
    ]
    .into_iter()
    .collect();
    let mut suspects = Suspects {
        first_pass: false,
        ..Default::default()
    };
    let c = sync(
        &mut table,
        &view(&[(4, None), (5, None)]),
        &map,
        &HashMap::new(),
        100 * S,
        100 * S,
        &mut suspects,
    );
    let e = table.get(4).unwrap();
    assert_eq!((e.start_ns, e.age_estimated), (10 * S, false));
    assert_eq!(e.owner.unwrap().pid, 9);
    assert_eq!(c.added, 2, "both lost their enter event");
    assert_eq!(table.get(5).unwrap().start_ns, 99 * S);
}

#[test]
fn sockets_unknown_to_table_and_map_are_added_on_the_second_sight() {
    let mut table = SocketTable::new();
    let mut suspects = Suspects::default();
    let none = HashMap::new();
    let v = view(&[(1, None)]);
    let c = sync(&mut table, &v, &none, &none, 10 * S, 9 * S, &mut suspects);
    assert_eq!(c.added, 1, "first pass: found at start");
    let v = view(&[(1, None), (2, None)]);
    let c = sync(&mut table, &v, &none, &none, 20 * S, 19 * S, &mut suspects);
    assert_eq!(
        (c.added, table.len()),
        (0, 1),
        "may have left while the dump ran"
    );
    let c = sync(&mut table, &v, &none, &none, 30 * S, 29 * S, &mut suspects);
    assert_eq!((c.added, table.len()), (1, 2), "still there: drift");
}

#[test]
fn newer_entries_and_uncovered_namespaces_are_left_alone() {
    let mut table = SocketTable::new();
    table.insert(SockEntry::from_record(&record(6, 95 * S, None)));
    let mut other = record(7, 5 * S, None);
    other.netns = 1234;
    table.insert(SockEntry::from_record(&other));
    let c = sync(
        &mut table,
        &view(&[]),
        &HashMap::new(),
        &HashMap::new(),
        100 * S,
        90 * S,
        &mut Suspects::default(),
    );
    assert_eq!(c, Corrections::default());
    assert_eq!(table.len(), 2);
}

#[test]
fn records_round_trip_for_the_kernel_map() {
    let rec = record(8, 3 * S, Some((4, "x")));
    let back = SockEntry::from_record(&rec).to_record();
    assert_eq!(
        (
            back.cookie,
            back.start_ns,
            back.local_addr,
            back.peer_addr,
            back.local_port,
            back.peer_port,
            back.family
        ),
        (
            rec.cookie,
            rec.start_ns,
            rec.local_addr,
            rec.peer_addr,
            rec.local_port,
            rec.peer_port,
            rec.family
        )
    );
}

#[test]
fn found_sockets_without_a_listener_are_inbound_when_the_peer_port_is_ephemeral() {
    let mut v = view(&[]);
    v.ephemeral = (32768, 60999);
    let mut d = diag(1, None);
    d.local = "127.0.0.1:7000".parse().unwrap();
    d.peer = "127.0.0.2:45000".parse().unwrap();
    assert_eq!(
        entry_from_diag(&d, NETNS, S, &v).direction,
        Direction::Inbound
    );
    v.listeners.insert((NETNS, 7000));
    assert_eq!(
        entry_from_diag(&d, NETNS, S, &v).direction,
        Direction::Inbound
    );
    let mut out = diag(2, None);
    out.local = "127.0.0.1:45001".parse().unwrap();
    out.peer = "127.0.0.2:7000".parse().unwrap();
    assert_eq!(
        entry_from_diag(&out, NETNS, S, &v).direction,
        Direction::Outbound
    );
    out.inode = 0;
    assert_eq!(
        entry_from_diag(&out, NETNS, S, &v).direction,
        Direction::Unaccepted
    );
}

#[test]
fn young_sockets_are_left_to_the_young_scanner() {
    let mut table = SocketTable::new();
    let v = view(&[(4, Some(40))]);
    let young = HashMap::from([(4, record(4, 95 * S, None))]);
    let mut suspects = Suspects::default();
    let c = sync(
        &mut table,
        &v,
        &HashMap::new(),
        &young,
        100 * S,
        90 * S,
        &mut suspects,
    );
    assert_eq!(c, Corrections::default());
    assert!(
        table.is_empty(),
        "not tracked before its grace, even at start-up"
    );
    assert!(suspects.cookies.is_empty(), "nor a suspect");
}

#[test]
fn a_socket_the_young_scanner_is_reporting_is_left_to_it() {
    // The scanner tracked it, then the socket left before the dump: its
    // record move fails and the scanner drops the row. A pass in between
    // must not count that as drift.
    let mut table = SocketTable::new();
    table.start_reporting([6]);
    table.insert(SockEntry::from_record(&record(6, 5 * S, None)));
    let v = view(&[]);
    let mut pass = || {
        sync(
            &mut table,
            &v,
            &HashMap::new(),
            &HashMap::new(),
            100 * S,
            90 * S,
            &mut Suspects::default(),
        )
    };
    assert_eq!(pass(), Corrections::default(), "not a correction");
    table.done_reporting([6]);
    let c = sync(
        &mut table,
        &v,
        &HashMap::new(),
        &HashMap::new(),
        100 * S,
        90 * S,
        &mut Suspects::default(),
    );
    assert_eq!(c.removed, 1, "once the scanner is done, a ghost is drift");
}

#[test]
fn the_kernel_map_does_not_lack_a_young_socket() {
    // Young when the pass read the maps, reported before the write-back:
    // the scanner moved its record; writing it again would count as a fix.
    let v = view(&[(7, None), (8, None)]);
    let young = HashMap::from([(7, record(7, 95 * S, None))]);
    let fixes = Reconciler::map_differences(&v, &HashMap::new(), &young, 90 * S);
    assert_eq!(fixes.missing(), &[8]);
}
