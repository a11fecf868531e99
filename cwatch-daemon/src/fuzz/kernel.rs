//! Bytes from the kernel side: ring buffer records (a mismatched or hostile
//! eBPF object can write anything there) decoded and applied to the table,
//! and sock_diag netlink replies.
use std::time::Duration;

use cwatch_common::{Event, SockRecord, TASK_COMM_LEN};
use proptest::prelude::*;

use crate::{
    intake::{apply, decode},
    kernel_view::sockdiag::{DiagSocket, parse_batch},
    table::SocketTable,
};

/// The bytes of `value` (a repr(C) plain-data type).
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: `T` is one of the shared repr(C) plain-data records; reading
    // its bytes (padding included, which these types have none of) is sound.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

prop_compose! {
    fn record()(
        cookie in 0u64..64,
        start_ns in prop_oneof![Just(0u64), any::<u64>(), 0u64..1_000_000_000_000],
        local in any::<[u8; 16]>(),
        peer in any::<[u8; 16]>(),
        inode in prop_oneof![Just(0u64), any::<u64>()],
        netns in any::<u32>(),
        owner_tgid in prop_oneof![Just(0u32), any::<u32>()],
        comm in any::<[u8; TASK_COMM_LEN]>(),
        ports in any::<(u16, u16)>(),
        family in prop_oneof![Just(2u16), Just(10u16), any::<u16>()],
        flags in any::<u16>(),
        cgroup in prop_oneof![Just(0u64), any::<u64>()],
    ) -> SockRecord {
        SockRecord {
            cookie, start_ns, local_addr: local, peer_addr: peer, inode, netns, owner_tgid,
            owner_comm: comm, local_port: ports.0, peer_port: ports.1, family, flags, cgroup,
        }
    }
}

prop_compose! {
    fn event()(
        kind in prop_oneof![1u32..=3, any::<u32>()],
        states in any::<(u16, u16)>(),
        tgid in any::<u32>(),
        ts_ns in prop_oneof![any::<u64>(), 0u64..2_000_000_000_000],
        rec in record(),
    ) -> Event {
        Event { kind, oldstate: states.0, newstate: states.1, tgid, _pad: 0, ts_ns, rec }
    }
}

/// A ring record: an event's bytes, cut short or grown, or noise.
fn ring_record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => event().prop_map(|e| bytes_of(&e)),
        1 => (event(), 0..size_of::<Event>()).prop_map(|(e, n)| bytes_of(&e)[..n].to_vec()),
        1 => (event(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(e, extra)| [bytes_of(&e), extra].concat()),
        1 => proptest::collection::vec(any::<u8>(), 0..2 * size_of::<Event>()),
    ]
}

proptest! {
    #[test]
    fn ring_records_decode_exactly_and_keep_the_table_consistent(
        records in proptest::collection::vec(ring_record(), 0..48),
    ) {
        let mut table = SocketTable::new();
        for bytes in &records {
            let decoded = decode(bytes);
            prop_assert_eq!(
                decoded.is_some(),
                bytes.len() == size_of::<Event>(),
                "a record of {} bytes (an event is {})", bytes.len(), size_of::<Event>()
            );
            if let Some(event) = decoded {
                let _ = apply(&mut table, &event);
            }
        }
        let leak_after = Duration::from_secs(300);
        let now = 1_500_000_000_000;
        let walked = table.summarize_where(now, leak_after, |_| true);
        prop_assert_eq!(table.summary(now, leak_after), walked, "kept gauges = a walk");
    }
}

/// One netlink message: (type, flags, payload); lengths are filled in.
fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = (16 + payload.len()) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    out.extend_from_slice(&[0; 8]); // seq, pid
    out.extend_from_slice(payload);
    out
}

/// An `inet_diag_msg` and its attributes, laid out as the kernel sends them.
#[derive(Clone, Debug)]
struct Diag {
    family: u8,
    state: u8,
    timer: u8,
    ports: (u16, u16),
    src: [u8; 16],
    dst: [u8; 16],
    cookie: u64,
    expires: u32,
    inode: u32,
    uid: u32,
    nlas: Vec<(u16, Vec<u8>)>,
}

impl Diag {
    fn payload(&self) -> Vec<u8> {
        let mut p = vec![self.family, self.state, self.timer, 0];
        p.extend_from_slice(&self.ports.0.to_be_bytes());
        p.extend_from_slice(&self.ports.1.to_be_bytes());
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        p.extend_from_slice(&0u32.to_ne_bytes()); // interface
        p.extend_from_slice(&(self.cookie as u32).to_ne_bytes());
        p.extend_from_slice(&((self.cookie >> 32) as u32).to_ne_bytes());
        for v in [self.expires, 0, 0, self.uid, self.inode] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        for (kind, data) in &self.nlas {
            p.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&kind.to_ne_bytes());
            p.extend_from_slice(data);
            p.resize(p.len().next_multiple_of(4), 0);
        }
        p
    }
}

/// An attribute as the kernel sends it unasked (shutdown, mark, cgroup id,
/// socket options) or with tcp_info, at its size; or an unknown one.
fn nla() -> impl Strategy<Value = (u16, Vec<u8>)> {
    let sized = |kind: u16, len: usize| {
        proptest::collection::vec(any::<u8>(), len).prop_map(move |b| (kind, b))
    };
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..260).prop_map(|b| (2u16, b)),
        sized(8, 1),
        sized(15, 4),
        sized(21, 8),
        sized(22, 2),
        (32u16..64, proptest::collection::vec(any::<u8>(), 0..40)),
    ]
}

prop_compose! {
    fn diag()(
        family in prop_oneof![Just(2u8), Just(10u8), any::<u8>()],
        state in any::<u8>(),
        timer in 0u8..6,
        ports in any::<(u16, u16)>(),
        src in any::<[u8; 16]>(),
        dst in any::<[u8; 16]>(),
        cookie in any::<u64>(),
        expires in any::<u32>(),
        inode in any::<u32>(),
        uid in any::<u32>(),
        nlas in proptest::collection::vec(nla(), 0..4),
    ) -> Diag {
        Diag { family, state, timer, ports, src, dst, cookie, expires, inode, uid, nlas }
    }
}

/// How to spoil a well-formed batch.
#[derive(Clone, Debug)]
enum Spoil {
    None,
    Flip(Vec<(usize, u8)>),
    Cut(usize),
}

proptest! {
    #[test]
    fn sock_diag_replies_parse_exactly_or_fail_cleanly(
        diags in proptest::collection::vec(diag(), 0..6),
        others in proptest::collection::vec((prop_oneof![Just(1u16), Just(2u16), 0u16..64], proptest::collection::vec(any::<u8>(), 0..40)), 0..2),
        done in any::<bool>(),
        spoil in prop_oneof![
            3 => Just(Spoil::None),
            2 => proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Spoil::Flip),
            1 => any::<usize>().prop_map(Spoil::Cut),
        ],
        noise in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut batch: Vec<u8> = diags.iter().flat_map(|d| message(20, &d.payload())).collect();
        let clean_others = others.is_empty();
        for (kind, payload) in &others {
            batch.extend(message(*kind, payload));
        }
        if done {
            batch.extend(message(3, &0i32.to_ne_bytes()));
        }
        let inet = diags.iter().all(|d| matches!(d.family, 2 | 10));
        let clean = matches!(spoil, Spoil::None) && clean_others && inet;
        match spoil {
            Spoil::None => {}
            Spoil::Flip(flips) if !batch.is_empty() => {
                for (at, byte) in flips {
                    let i = at % batch.len();
                    batch[i] = byte;
                }
            }
            Spoil::Flip(_) => {}
            Spoil::Cut(at) => batch.truncate(at % (batch.len() + 1)),
        }
        let mut out: Vec<DiagSocket> = Vec::new();
        let result = parse_batch(&batch, &mut out);
        if clean {
            // Every socket, exactly as sent.
            prop_assert_eq!(result.ok(), Some(done));
            prop_assert_eq!(out.len(), diags.len());
            for (d, s) in diags.iter().zip(&out) {
                prop_assert_eq!(s.cookie, d.cookie);
                prop_assert_eq!(s.state, d.state);
                prop_assert_eq!(s.inode, u64::from(d.inode));
                prop_assert_eq!((s.local.port(), s.peer.port()), d.ports);
            }
        }
        // Noise alone never panics either.
        let _ = parse_batch(&noise, &mut out);
    }
}
