//! Every field of an entry survives the trip through the kernel's record:
//! table → `CLOSE_WAIT` map (reconciliation writes found sockets back) →
//! table (the next daemon reads them after a restart). Properties over
//! random entries: direction, estimated starts, both address families, with
//! and without an owner.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use crate::table::{Comm, Direction, SockEntry, entry::Owner};

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        // Not IPv4-mapped: the table holds those as IPv4.
        any::<[u8; 16]>()
            .prop_filter("not v4-mapped", |b| Ipv6Addr::from(*b)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn comm() -> impl Strategy<Value = Comm> {
    proptest::collection::vec(1u8..=255, 1..16).prop_map(|name| {
        let mut bytes = [0u8; cwatch_common::TASK_COMM_LEN];
        bytes[..name.len()].copy_from_slice(&name);
        Comm::from_bytes(bytes)
    })
}

prop_compose! {
    fn entry()(
        cookie in any::<u64>(),
        start_ns in any::<u64>(),
        age_estimated in any::<bool>(),
        v6 in any::<bool>(),
        local in addr(),
        peer in addr(),
        ports in any::<(u16, u16)>(),
        netns in any::<u32>(),
        cgroup in any::<u64>(),
        inode in prop_oneof![Just(0u64), 1..u64::from(u32::MAX)],
        direction in prop_oneof![
            Just(Direction::Outbound),
            Just(Direction::Inbound),
            Just(Direction::Unaccepted),
        ],
        owner in proptest::option::of((1u32.., comm())),
    ) -> SockEntry {
        // Both ends of one socket have one family.
        let (local, peer) = match (v6, local, peer) {
            (false, IpAddr::V6(_), _) | (false, _, IpAddr::V6(_)) => {
                (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1)))
            }
            (true, IpAddr::V4(_), _) | (true, _, IpAddr::V4(_)) => {
                (IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)))
            }
            (_, l, p) => (l, p),
        };
        let owner = owner.map(|(pid, comm)| Owner { pid, comm });
        let mut e = SockEntry::from_record(&cwatch_common::SockRecord::zeroed());
        e.cookie = cookie;
        e.start_ns = start_ns;
        e.age_estimated = age_estimated;
        e.local = SocketAddr::new(local, ports.0);
        e.peer = SocketAddr::new(peer, ports.1);
        e.netns = netns;
        e.inode = inode;
        e.cgroup = cgroup;
        e.direction = direction;
        e.hint = owner;
        e.owner = owner;
        e
    }
}

proptest! {
    #[test]
    fn every_field_survives_the_kernel_map(e in entry()) {
        let back = SockEntry::from_record(&e.to_record());
        prop_assert_eq!(back.cookie, e.cookie);
        prop_assert_eq!(back.start_ns, e.start_ns);
        prop_assert_eq!(back.age_estimated, e.age_estimated, "estimated stays estimated");
        prop_assert_eq!(back.local, e.local);
        prop_assert_eq!(back.peer, e.peer);
        prop_assert_eq!(back.netns, e.netns);
        prop_assert_eq!(back.inode, e.inode);
        prop_assert_eq!(back.cgroup, e.cgroup);
        prop_assert_eq!(back.direction, e.direction, "direction kept");
        prop_assert_eq!(back.owner, e.owner, "owner pid and comm kept");
        prop_assert_eq!(back.hint, e.owner, "the owner becomes the next start's hint");
    }
}

proptest! {
    /// The table keeps entries packed: what goes in comes out, with its
    /// holders (one, several, none) and whatever else is in the table.
    #[test]
    fn every_field_survives_the_table(
        e in entry(),
        others in proptest::collection::vec(entry(), 0..8),
        holders in proptest::collection::vec((1u32..50, 0i32..9, comm()), 0..4),
    ) {
        let mut t = crate::table::SocketTable::new();
        for o in &others {
            t.insert(o.clone());
        }
        let mut e = e;
        e.set_holders(
            holders
                .into_iter()
                .map(|(pid, fd, comm)| crate::table::Holder { pid, fd, comm })
                .collect(),
        );
        t.insert(e.clone());
        prop_assert_eq!(t.get(e.cookie), Some(e.clone()));
        // Taking the others out (each may have shared its values) changes
        // nothing of it.
        for o in &others {
            if o.cookie != e.cookie {
                t.remove(o.cookie);
            }
        }
        prop_assert_eq!(t.remove(e.cookie), Some(e));
        prop_assert!(t.is_empty());
    }
}
