//! Offset resolution against hand-built BTF (exact expectations) and against
//! the running kernel's BTF (it must resolve, and agree with the C layout).
use btf_rs::Btf;

use super::offsets::*;

/// Builds a raw BTF blob, type by type (ids start at 1).
#[derive(Default)]
struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;

impl BtfBuilder {
    fn new() -> Self {
        Self {
            strings: vec![0],
            next_id: 1,
            ..Default::default()
        }
    }

    fn name(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn push_u32(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }

    fn header(
        &mut self,
        name: &str,
        kind: u32,
        kind_flag: bool,
        vlen: u32,
        size_or_type: u32,
    ) -> u32 {
        let name_off = self.name(name);
        self.push_u32(name_off);
        self.push_u32(vlen | kind << 24 | u32::from(kind_flag) << 31);
        self.push_u32(size_or_type);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.header(name, KIND_INT, false, 0, size);
        self.push_u32(size * 8);
        id
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.header("", KIND_PTR, false, 0, to)
    }

    fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
        let id = self.header("", KIND_ARRAY, false, 0, 0);
        self.push_u32(elem);
        self.push_u32(index);
        self.push_u32(len);
        id
    }

    fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.header(name, KIND_TYPEDEF, false, 0, to)
    }

    /// `members`: (name, type id, bit offset, bitfield size or 0).
    fn record(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let bitfields = members.iter().any(|m| m.3 != 0);
        let id = self.header(name, kind, bitfields, members.len() as u32, size);
        for &(mname, ty, bit_off, bits) in members {
            let off = self.name(mname);
            self.push_u32(off);
            self.push_u32(ty);
            self.push_u32(if bitfields {
                bits << 24 | bit_off
            } else {
                bit_off
            });
        }
        id
    }

    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for v in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A miniature `struct sock` with the kernel's shapes: anonymous unions
/// holding anonymous structs, a typedef'd one-member struct, a bitfield.
fn mini_kernel() -> Btf {
    Btf::from_bytes(&mini_kernel_blob()).expect("valid BTF")
}

fn mini_kernel_blob() -> Vec<u8> {
    let mut b = BtfBuilder::new();
    let u8_t = b.int("unsigned char", 1);
    let u16_t = b.int("short unsigned int", 2);
    let u32_t = b.int("unsigned int", 4);
    let u64_t = b.int("long long unsigned int", 8);
    let addr_pair = b.record(
        KIND_STRUCT,
        "",
        8,
        &[("skc_daddr", u32_t, 0, 0), ("skc_rcv_saddr", u32_t, 32, 0)],
    );
    let addr_union = b.record(
        KIND_UNION,
        "",
        8,
        &[("skc_addrpair", u64_t, 0, 0), ("", addr_pair, 0, 0)],
    );
    let net = b.record(
        KIND_STRUCT,
        "net",
        64,
        &[("ifindex", u32_t, 0, 0), ("ns_inum_pad", u32_t, 32, 0)],
    );
    let net_ptr = b.ptr(net);
    let possible_net = b.record(KIND_STRUCT, "", 8, &[("net", net_ptr, 0, 0)]);
    let possible_net_t = b.typedef("possible_net_t", possible_net);
    let arr16 = b.array(u8_t, u32_t, 16);
    let common = b.record(
        KIND_STRUCT,
        "sock_common",
        64,
        &[
            ("", addr_union, 0, 0),
            ("skc_family", u16_t, 64, 0),
            ("skc_reuse", u8_t, 80, 4),
            ("skc_net", possible_net_t, 128, 0),
            ("skc_v6_daddr", arr16, 192, 0),
        ],
    );
    b.record(
        KIND_STRUCT,
        "sock",
        128,
        &[
            ("__sk_common", common, 0, 0),
            ("sk_protocol", u16_t, 512 + 16, 0),
        ],
    );
    b.build()
}

proptest::proptest! {
    /// BTF is outside input too (a `--kernel-btf` file, a broken kernel):
    /// the mini kernel's blob with bytes flipped, cut short or grown never
    /// makes parsing or a lookup panic.
    #[test]
    fn hostile_btf_never_panics(
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..12),
        cut in proptest::prelude::any::<Option<usize>>(),
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
    ) {
        let mut blob = mini_kernel_blob();
        for (at, byte) in flips {
            let i = at % blob.len();
            blob[i] = byte;
        }
        if let Some(at) = cut {
            blob.truncate(at % (blob.len() + 1));
        }
        blob.extend(tail);
        if let Ok(btf) = parse(&blob) {
            let _ = resolve(&btf);
            let _ = field(&btf, "sock", "__sk_common.skc_net.net", 8);
            let _ = member_offset(&btf, "sock", "__sk_common");
        }
    }
}

#[test]
fn btf_whose_types_contain_themselves_is_refused_not_a_stack_overflow() {
    // Found by the fuzz loop (a flipped type id): an anonymous member of
    // the struct's own type, and an array of itself, recursed forever.
    let mut b = BtfBuilder::new();
    let own = b.next_id;
    b.record(KIND_STRUCT, "sock", 8, &[("", own, 0, 0)]);
    let array = b.next_id;
    b.array(array, array, 4);
    b.record(KIND_STRUCT, "net", 8, &[("ns", array, 0, 0)]);
    let btf = parse(&b.build()).expect("well-formed header");
    assert!(matches!(
        field(&btf, "sock", "skc_family", 2),
        Err(OffsetsError::Malformed { .. })
    ));
    assert!(matches!(
        field(&btf, "net", "ns", 4),
        Err(OffsetsError::Malformed { .. })
    ));
}

#[test]
fn btf_with_sections_past_its_end_is_refused_not_a_panic() {
    // Found by the fuzz loop: a string section offset near u32::MAX made
    // btf-rs overflow while seeking to it.
    let mut blob = mini_kernel_blob();
    blob[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = parse(&blob).err().expect("refused").to_string();
    assert!(err.contains("string section"), "{err}");
    assert!(parse(&blob[..10]).is_err());
    assert!(parse(b"\x7fELF and more bytes than a header").is_err());
    assert!(parse(&mini_kernel_blob()).is_ok());
}

#[test]
fn resolves_through_anonymous_unions_and_typedefs() {
    let btf = mini_kernel();
    assert_eq!(field(&btf, "sock", "__sk_common.skc_daddr", 4).unwrap(), 0);
    assert_eq!(
        field(&btf, "sock", "__sk_common.skc_rcv_saddr", 4).unwrap(),
        4
    );
    assert_eq!(field(&btf, "sock", "__sk_common.skc_family", 2).unwrap(), 8);
    assert_eq!(
        field(&btf, "sock", "__sk_common.skc_net.net", 8).unwrap(),
        16
    );
    assert_eq!(
        field(&btf, "sock", "__sk_common.skc_v6_daddr", 16).unwrap(),
        24
    );
    assert_eq!(field(&btf, "sock", "sk_protocol", 2).unwrap(), 66);
}

#[test]
fn rejects_wrong_size_bitfields_and_missing_fields() {
    let btf = mini_kernel();
    match field(&btf, "sock", "__sk_common.skc_family", 4) {
        Err(OffsetsError::Size {
            found: 2,
            expected: 4,
            ..
        }) => {}
        other => panic!("expected a size error, got {other:?}"),
    }
    assert!(matches!(
        field(&btf, "sock", "__sk_common.skc_reuse", 1),
        Err(OffsetsError::Bitfield { .. })
    ));
    let err = field(&btf, "sock", "__sk_common.skc_nope", 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "kernel BTF: `sock.__sk_common` has no field `skc_nope`"
    );
    assert!(matches!(
        field(&btf, "inode", "i_ino", 8),
        Err(OffsetsError::NoStruct(_))
    ));
    // One IPv6 address field without the other is not "no IPv6": an error
    // naming the missing field.
    assert_eq!(
        resolve(&btf).unwrap_err().to_string(),
        "kernel BTF: `sock.__sk_common` has no field `skc_v6_rcv_saddr`"
    );
}

#[test]
fn running_kernel_resolves_with_the_c_layout() {
    let btf = match Btf::from_file(VMLINUX_BTF) {
        Ok(btf) => btf,
        Err(err) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: no kernel BTF here ({err})");
            return;
        }
        Err(err) => panic!("CI=true but {VMLINUX_BTF} is unreadable: {err}"),
    };
    let o = resolve(&btf).expect("the running kernel resolves");
    // struct sock_common starts struct sock, and lays out daddr, rcv_saddr,
    // (hash), dport, num, family in that order; the v6 addresses follow skc_net.
    assert!(o.sk_daddr < o.sk_rcv_saddr, "{o:?}");
    assert!(
        o.sk_rcv_saddr < o.sk_dport && o.sk_dport < o.sk_num && o.sk_num < o.sk_family,
        "{o:?}"
    );
    assert_eq!(o.sk_rcv_saddr, o.sk_daddr + 4);
    assert_eq!(o.sk_num, o.sk_dport + 2);
    assert!(
        o.sk_net < o.sk_v6_daddr && o.sk_v6_daddr + 16 == o.sk_v6_rcv_saddr,
        "{o:?}"
    );
    assert!(
        o.sk_protocol > o.sk_v6_rcv_saddr + 16,
        "sk_protocol lies past __sk_common: {o:?}"
    );
    assert_eq!(o.has_ipv6, 1);
    assert_ne!(o.task_comm, o.task_group_leader);
    // The inode follows the whole `struct socket` inside `struct socket_alloc`.
    let socket_size = btf
        .resolve_types_by_name("socket")
        .unwrap()
        .into_iter()
        .find_map(|t| match t {
            btf_rs::Type::Struct(s) if !s.members.is_empty() => Some(s.size()),
            _ => None,
        })
        .unwrap();
    assert!(o.socket_inode as usize >= socket_size, "{o:?}");
    assert!(
        o.sk_socket > o.sk_v6_rcv_saddr,
        "sk_socket lies past __sk_common: {o:?}"
    );
    // The file's reference count: `f_ref` since 6.13, `f_count` before.
    let has_f_ref = field(&btf, "file", "f_ref", 8).is_ok();
    let expected_kind = if has_f_ref {
        cwatch_common::FILE_REF_BIASED
    } else {
        cwatch_common::FILE_REF_COUNT
    };
    assert_eq!(o.file_ref_kind, expected_kind, "{o:?}");
    assert!(
        o.socket_file > 0 && (o.socket_file as usize) < socket_size,
        "{o:?}"
    );
}
