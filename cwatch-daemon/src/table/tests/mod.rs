//! The table's own tests, and the shared builders (`record`, `holder`) the
//! crate's other tests use; [`groups`] checks the kept groups against the
//! walk, [`keys`] the ages and summaries.
mod groups;
mod keys;
mod records;

use std::net::Ipv6Addr;

use cwatch_common::{
    AF_INET, AF_INET6, REC_INBOUND, REC_OUTBOUND, REC_UNACCEPTED, SockRecord, TASK_COMM_LEN,
};

use super::*;

/// A record as the kernel would write it, for tests across the crate.
pub fn record(cookie: u64, start_ns: u64, owner: Option<(u32, &str)>) -> SockRecord {
    let mut rec = SockRecord::zeroed();
    rec.cookie = cookie;
    rec.start_ns = start_ns;
    rec.family = AF_INET;
    rec.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    rec.peer_addr[..4].copy_from_slice(&[127, 0, 1, 1]);
    rec.local_port = 40000;
    rec.peer_port = 7000;
    rec.netns = 4026531840;
    rec.inode = 1_000_000 + cookie;
    if let Some((pid, comm)) = owner {
        rec.owner_tgid = pid;
        rec.owner_comm[..comm.len()].copy_from_slice(comm.as_bytes());
        rec.flags = REC_OUTBOUND;
    }
    rec
}

pub fn holder(pid: u32, fd: i32, comm: &str) -> Holder {
    let mut bytes = [0u8; TASK_COMM_LEN];
    bytes[..comm.len()].copy_from_slice(comm.as_bytes());
    Holder {
        pid,
        fd,
        comm: Comm::from_bytes(bytes),
    }
}

#[test]
fn owner_is_the_lowest_pid_holder_else_the_hint() {
    let mut e = SockEntry::from_record(&record(7, 1, Some((50, "parent"))));
    assert_eq!(e.owner.unwrap().pid, 50);
    assert_eq!(e.owner_fd(), None);
    e.set_holders(vec![
        holder(61, 9, "child"),
        holder(50, 4, "parent"),
        holder(50, 3, "parent"),
    ]);
    assert_eq!(e.owner.unwrap().pid, 50);
    assert_eq!(e.owner_fd(), Some(3), "lowest fd of the owner");
    assert_eq!(e.holders.len(), 3);
    e.set_holders(vec![holder(61, 9, "child")]);
    assert_eq!(
        e.owner.unwrap().comm.as_str(),
        "child",
        "parent closed its fds"
    );
    e.set_holders(Vec::new());
    assert_eq!(
        e.owner.unwrap().pid,
        50,
        "no fd holds it: back to the kernel's hint"
    );
    let mut unaccepted = record(8, 1, Some((70, "server")));
    unaccepted.flags = REC_UNACCEPTED | REC_INBOUND;
    unaccepted.inode = 0;
    let u = SockEntry::from_record(&unaccepted);
    assert_eq!(
        (u.direction, u.owner.unwrap().pid),
        (Direction::Unaccepted, 70)
    );
}

#[test]
fn records_become_entries() {
    let e = SockEntry::from_record(&record(7, 100, Some((42, "leaky"))));
    assert_eq!(e.local, "127.0.0.1:40000".parse().unwrap());
    assert_eq!(e.peer, "127.0.1.1:7000".parse().unwrap());
    assert_eq!(e.direction, Direction::Outbound);
    let owner = e.owner.unwrap();
    assert_eq!((owner.pid, owner.comm.as_str().as_ref()), (42, "leaky"));

    let anon = SockEntry::from_record(&record(8, 100, None));
    assert_eq!(anon.owner, None);
    assert_eq!(anon.direction, Direction::Inbound);
}

#[test]
fn ipv6_is_canonical_and_mapped_ipv4_is_ipv4() {
    let mut rec = record(9, 1, None);
    rec.family = AF_INET6;
    rec.local_addr = "::ffff:127.0.0.9".parse::<Ipv6Addr>().unwrap().octets();
    rec.peer_addr = "2001:db8:0:0:0:0:0:1".parse::<Ipv6Addr>().unwrap().octets();
    let e = SockEntry::from_record(&rec);
    assert_eq!(e.local.ip().to_string(), "127.0.0.9");
    assert_eq!(e.peer.ip().to_string(), "2001:db8::1");
    rec.family = 0;
    assert_eq!(
        SockEntry::from_record(&rec).peer.ip().to_string(),
        "0.0.0.0"
    );
}

#[test]
fn comm_stops_at_nul_and_survives_bad_utf8() {
    let mut raw = [0u8; 16];
    raw[..5].copy_from_slice(b"nginx");
    assert_eq!(Comm::from_bytes(raw).as_str(), "nginx");
    assert_eq!(Comm::from_bytes([b'x'; 16]).as_str(), "x".repeat(16));
    raw[0] = 0xff;
    assert_eq!(
        Comm::from_bytes(raw).as_str(),
        "\\xffginx",
        "the exact bytes, not U+FFFD"
    );
}

#[test]
fn oldest_first_is_stable() {
    let mut t = SocketTable::new();
    for (cookie, start) in [(3, 30), (1, 10), (2, 10), (4, 5)] {
        t.insert(SockEntry::from_record(&record(cookie, start, None)));
    }
    let order: Vec<u64> = t.oldest_first().iter().map(|e| e.cookie).collect();
    assert_eq!(order, vec![4, 1, 2, 3]);
    assert!(t.remove(1).is_some());
    assert!(t.remove(1).is_none());
    assert_eq!(t.len(), 3);
}

#[test]
fn unresolved_inodes_are_those_of_the_unresolved_entries() {
    let mut t = SocketTable::new();
    for cookie in 1..=3 {
        t.insert(SockEntry::from_record(&record(cookie, 100, None)));
    }
    t.set_holders(2, vec![holder(42, 5, "held")]);
    let mut got: Vec<u64> = t.unresolved_inodes().collect();
    got.sort_unstable();
    let mut want: Vec<u64> = t.unresolved().map(|e| e.inode).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(got, vec![1_000_001, 1_000_003]);
}
