use super::*;
use crate::{
    kernel_view::{entry_from_diag, sockdiag::DiagSocket},
    table::{Direction, tests::record},
};
use cwatch_common::tcp_state;
use table_fix::{Found, SYNC_CHUNK};

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

/// The pass's table side on a table of its own, with nobody else between
/// its chunks, and a kernel map that deleted nothing since it was read.
fn sync(
    table: &mut SocketTable,
    view: &KernelView,
    map: &HashMap<u64, SockRecord>,
    young: &HashMap<u64, SockRecord>,
    now_ns: u64,
    dump_start_ns: u64,
    suspects: &mut Suspects,
) -> Corrections {
    let mut map = map.clone();
    let found = Found {
        view,
        map: &mut map,
        young,
        now_ns,
        dump_start_ns,
    };
    table_fix::sync(found, suspects, &mut |f| f(table), &mut |_| Vec::new())
}

/// [`sync`] of a first pass (dump at 90 s, now 100 s) with empty maps.
fn plain_sync(table: &mut SocketTable, v: &KernelView) -> Corrections {
    sync(
        table,
        v,
        &HashMap::new(),
        &HashMap::new(),
        100 * S,
        90 * S,
        &mut Suspects::default(),
    )
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
    let c = plain_sync(&mut table, &v);
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
    let again = plain_sync(&mut table, &v);
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
    let mut pass = || plain_sync(&mut table, &v);
    assert_eq!(pass(), Corrections::default(), "not a correction");
    table.done_reporting([6]);
    let c = plain_sync(&mut table, &v);
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

/// A table of `n` sockets (cookies 1..=n, started at 5 s), every one in
/// the view and in the kernel map, and one more (`n + 1`) the view shows
/// gone: what a later pass over a million sockets looks like.
fn steady(n: u64) -> (SocketTable, KernelView, HashMap<u64, SockRecord>) {
    let mut table = SocketTable::new();
    let mut map = HashMap::new();
    for cookie in 1..=n + 1 {
        let rec = record(cookie, 5 * S, None);
        table.insert(SockEntry::from_record(&rec));
        map.insert(cookie, rec);
    }
    let cookies: Vec<(u64, Option<u64>)> = (1..=n).map(|c| (c, None)).collect();
    (table, view(&cookies), map)
}

/// A later pass (dump at 90 s, now 100 s) over `v` and `map`: `between`
/// runs before each hold of the lock (numbered from 1), as another task
/// would between two chunks; `gone` answers the map's second look.
/// (corrections, holds).
fn later_pass(
    table: &mut SocketTable,
    v: &KernelView,
    map: &mut HashMap<u64, SockRecord>,
    suspects: &mut Suspects,
    between: &mut dyn FnMut(usize, &mut SocketTable),
    gone: &mut dyn FnMut(&[u64]) -> Vec<u64>,
) -> (Corrections, usize) {
    let found = Found {
        view: v,
        map,
        young: &HashMap::new(),
        now_ns: 100 * S,
        dump_start_ns: 90 * S,
    };
    let mut holds = 0;
    let with_table = &mut |f: &mut dyn FnMut(&mut SocketTable)| {
        holds += 1;
        between(holds, table);
        f(table)
    };
    let c = table_fix::sync(found, suspects, with_table, gone);
    (c, holds)
}

fn not_first() -> Suspects {
    Suspects {
        first_pass: false,
        ..Suspects::default()
    }
}

#[test]
fn a_pass_over_many_sockets_takes_the_lock_a_chunk_at_a_time() {
    let n = 3 * SYNC_CHUNK as u64;
    let (mut table, v, mut map) = steady(n);
    let (c, holds) = later_pass(
        &mut table,
        &v,
        &mut map,
        &mut not_first(),
        &mut |_, _| {},
        &mut |_| Vec::new(),
    );
    assert_eq!((c.added, c.removed), (0, 1), "only the gone one");
    assert_eq!(table.len() as u64, n);
    // The keys, the one stale chunk, then the view's sockets a chunk each.
    assert_eq!(holds, 2 + 3, "one hold per chunk, not one for the pass");
}

#[test]
fn a_leave_applied_between_two_chunks_is_not_written_back() {
    // Intake applies the leave of a socket of the last chunk while the
    // pass waits between two: the kernel deleted its record first.
    let n = 2 * SYNC_CHUNK as u64;
    let (mut table, v, mut map) = steady(n);
    let left = *v.close_wait.keys().nth(SYNC_CHUNK).unwrap();
    let mut asked = Vec::new();
    let mut suspects = not_first();
    let (c, _) = later_pass(
        &mut table,
        &v,
        &mut map,
        &mut suspects,
        // After the keys, the stale chunk and the first view chunk.
        &mut |hold, table| {
            if hold == 4 {
                table.remove(left);
            }
        },
        &mut |cookies| {
            asked.extend_from_slice(cookies);
            cookies.iter().copied().filter(|&c| c == left).collect()
        },
    );
    assert_eq!(asked, vec![left], "asked again only about the missing one");
    assert!(table.get(left).is_none(), "no ghost written back");
    assert_eq!(c.added, 0);
    assert!(suspects.cookies.contains(&left), "a suspect if seen again");
}

#[test]
fn a_stale_socket_reported_again_between_chunks_is_kept() {
    // The view shows 5 gone; before its chunk runs, the young scanner
    // reports a socket of that cookie anew (after the dump began).
    let (mut table, v, mut map) = steady(4);
    let (c, _) = later_pass(
        &mut table,
        &v,
        &mut map,
        &mut Suspects::default(),
        &mut |hold, table| {
            if hold == 2 {
                table.insert(SockEntry::from_record(&record(5, 95 * S, None)));
            }
        },
        &mut |_| Vec::new(),
    );
    assert_eq!(c.removed, 0, "newer than the dump: left alone");
    assert_eq!(table.start_of(5), Some(95 * S));
}
