/*!
Resolves the kernel struct offsets the eBPF programs need from the running
kernel's BTF (`/sys/kernel/btf/vmlinux`).

Rust eBPF has no CO-RE relocations, so the programs read fields at offsets we
pass them as a global. A wrong offset of the right size would not be caught by
the verifier: every field is therefore looked up by name, through anonymous
unions and typedefs, and checked for the size the program reads. Anything
unexpected (missing field, bitfield, other size) is an error naming the field.
*/
use btf_rs::{Btf, Type};
use cwatch_common::{FILE_REF_BIASED, FILE_REF_COUNT, FILE_REF_UNKNOWN, KernelOffsets};

#[cfg(test)]
pub const VMLINUX_BTF: &str = crate::config::DEFAULT_KERNEL_BTF;

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("kernel BTF: cannot read {path}: {reason}")]
    Read { path: String, reason: anyhow::Error },
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: `{strukt}` has no field `{field}`")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: `{strukt}.{path}` is {found} bytes, cwatch reads {expected}")]
    Size {
        strukt: String,
        path: String,
        found: usize,
        expected: usize,
    },
    #[error("kernel BTF: `{strukt}.{path}` is a bitfield or not byte aligned")]
    Bitfield { strukt: String, path: String },
    #[error("kernel BTF: malformed type while resolving `{strukt}.{path}`: {reason}")]
    Malformed {
        strukt: String,
        path: String,
        reason: anyhow::Error,
    },
}

/// Reads and parses a BTF file, its header checked first: the parser
/// trusts the header's section offsets (an overflowing one made it panic,
/// found by the fuzz loop), so a file whose sections do not lie inside it
/// is refused here.
pub fn read(path: &std::path::Path) -> Result<Btf, OffsetsError> {
    let failed = |reason: anyhow::Error| OffsetsError::Read {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| failed(e.into()))?;
    parse(&bytes).map_err(failed)
}

/// [`read`]'s parse half.
pub fn parse(bytes: &[u8]) -> anyhow::Result<Btf> {
    check_header(bytes)?;
    Btf::from_bytes(bytes)
}

/// The BTF header (`struct btf_header`): magic, version 1, and sections
/// that lie inside the file.
pub fn check_header(bytes: &[u8]) -> anyhow::Result<()> {
    let u32_at = |at: usize, big: bool| -> anyhow::Result<u64> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("not BTF: {} bytes is too short for a header", bytes.len())
            })?;
        Ok(u64::from(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }))
    };
    let big = match bytes.get(..2) {
        Some([0x9f, 0xeb]) => false,
        Some([0xeb, 0x9f]) => true,
        _ => anyhow::bail!("not BTF (no 0xeb9f magic)"),
    };
    if bytes.get(2) != Some(&1) {
        anyhow::bail!("BTF version {:?} (cwatch reads version 1)", bytes.get(2));
    }
    let len = bytes.len() as u64;
    let hdr_len = u32_at(4, big)?;
    if hdr_len < 24 || hdr_len > len {
        anyhow::bail!("BTF header length {hdr_len} does not fit a {len}-byte file");
    }
    for (what, off_at) in [("type", 8), ("string", 16)] {
        let (off, size) = (u32_at(off_at, big)?, u32_at(off_at + 4, big)?);
        if hdr_len + off + size > len {
            anyhow::bail!(
                "BTF {what} section ({size} bytes at {off}) lies past the end of the file ({len} bytes)"
            );
        }
    }
    Ok(())
}

/// Resolves every field of `KernelOffsets` in `btf`.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets, OffsetsError> {
    let sock = |path: &str, size: usize| field(btf, "sock", path, size);
    let v6 = (
        sock("__sk_common.skc_v6_rcv_saddr", 16),
        sock("__sk_common.skc_v6_daddr", 16),
    );
    let (sk_v6_rcv_saddr, sk_v6_daddr, has_ipv6) = match v6 {
        (Ok(local), Ok(peer)) => (local, peer, 1),
        // A kernel without CONFIG_IPV6 has no such fields and no such sockets.
        (Err(OffsetsError::NoField { .. }), Err(OffsetsError::NoField { .. })) => (0, 0, 0),
        (Err(err), _) | (_, Err(err)) => return Err(err),
    };
    let (socket_file, file_ref, file_ref_kind) = file_ref(btf)?;
    let (sk_cgroup, cgroup_kn, kernfs_id, has_cgroup) = cgroup(btf)?;
    Ok(KernelOffsets {
        sk_family: sock("__sk_common.skc_family", 2)?,
        sk_protocol: sock("sk_protocol", 2)?,
        sk_num: sock("__sk_common.skc_num", 2)?,
        sk_dport: sock("__sk_common.skc_dport", 2)?,
        sk_rcv_saddr: sock("__sk_common.skc_rcv_saddr", 4)?,
        sk_daddr: sock("__sk_common.skc_daddr", 4)?,
        sk_v6_rcv_saddr,
        sk_v6_daddr,
        sk_net: sock("__sk_common.skc_net.net", 8)?,
        net_ns_inum: field(btf, "net", "ns.inum", 4)?,
        task_group_leader: field(btf, "task_struct", "group_leader", 8)?,
        task_comm: field(btf, "task_struct", "comm", 16)?,
        has_ipv6,
        sk_socket: sock("sk_socket", 8)?,
        socket_inode: member_offset(btf, "socket_alloc", "vfs_inode")?
            .checked_sub(member_offset(btf, "socket_alloc", "socket")?)
            .ok_or_else(|| OffsetsError::NoField {
                strukt: "socket_alloc".into(),
                field: "vfs_inode after socket".into(),
            })?,
        inode_ino: field(btf, "inode", "i_ino", 8)?,
        socket_file,
        file_ref,
        file_ref_kind,
        sk_cgroup,
        cgroup_kn,
        kernfs_id,
        has_cgroup,
        _pad: 0,
    })
}

/// A field that may be missing: `Ok(None)` when the kernel has no such
/// field or struct.
fn optional(r: Result<u32, OffsetsError>) -> Result<Option<u32>, OffsetsError> {
    match r {
        Ok(offset) => Ok(Some(offset)),
        Err(OffsetsError::NoField { .. } | OffsetsError::NoStruct(_)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The socket's cgroup and its id: `sock.sk_cgrp_data.cgroup`,
/// `cgroup.kn`, `kernfs_node.id`. Optional: without them (no
/// CONFIG_SOCK_CGROUP_DATA) the cgroup id is 0 and attribution does without.
fn cgroup(btf: &Btf) -> Result<(u32, u32, u32, u32), OffsetsError> {
    let fields = (
        optional(field(btf, "sock", "sk_cgrp_data.cgroup", 8))?,
        optional(field(btf, "cgroup", "kn", 8))?,
        optional(field(btf, "kernfs_node", "id", 8))?,
    );
    Ok(match fields {
        (Some(sk), Some(kn), Some(id)) => (sk, kn, id, 1),
        _ => (0, 0, 0, 0),
    })
}

/// `struct socket`'s `file` and the file's reference count, and how to read
/// it (`FILE_REF_*`). Optional: without them every socket that leaves
/// CLOSE_WAIT is treated as possibly still held (slower, never wrong).
fn file_ref(btf: &Btf) -> Result<(u32, u32, u32), OffsetsError> {
    let Some(socket_file) = optional(field(btf, "socket", "file", 8))? else {
        return Ok((0, 0, FILE_REF_UNKNOWN));
    };
    if let Some(f_ref) = optional(field(btf, "file", "f_ref.refcnt", 8))? {
        return Ok((socket_file, f_ref, FILE_REF_BIASED));
    }
    match optional(field(btf, "file", "f_count", 8))? {
        Some(f_count) => Ok((socket_file, f_count, FILE_REF_COUNT)),
        None => Ok((0, 0, FILE_REF_UNKNOWN)),
    }
}

/// Byte offset of the dotted `path` inside `strukt`, whatever its size (for
/// struct-typed members whose address, not value, the programs use).
pub fn member_offset(btf: &Btf, strukt: &str, path: &str) -> Result<u32, OffsetsError> {
    locate(btf, strukt, path).map(|(offset, _)| offset)
}

/// Byte offset of the dotted `path` inside struct `strukt`, checking that the
/// field is `expected` bytes wide. Anonymous struct/union members are searched
/// through, as C does.
pub fn field(btf: &Btf, strukt: &str, path: &str, expected: usize) -> Result<u32, OffsetsError> {
    let (offset, found) = locate(btf, strukt, path)?;
    if found != expected {
        return Err(OffsetsError::Size {
            strukt: strukt.to_string(),
            path: path.to_string(),
            found,
            expected,
        });
    }
    Ok(offset)
}

/// Byte offset and size of the dotted `path` inside `strukt`.
fn locate(btf: &Btf, strukt: &str, path: &str) -> Result<(u32, usize), OffsetsError> {
    let malformed = |reason| OffsetsError::Malformed {
        strukt: strukt.to_string(),
        path: path.to_string(),
        reason,
    };
    let mut ty = find_struct(btf, strukt)?;
    let mut bits = 0u64;
    let mut bitfield = false;
    let mut walked = String::new();
    for name in path.split('.') {
        let Some(member) = find_member(btf, &ty, name, 0).map_err(malformed)? else {
            let owner = if walked.is_empty() {
                strukt.to_string()
            } else {
                format!("{strukt}.{walked}")
            };
            return Err(OffsetsError::NoField {
                strukt: owner,
                field: name.to_string(),
            });
        };
        bits += member.bit_offset;
        bitfield |= member.bitfield;
        ty = strip_modifiers(btf, member.ty).map_err(malformed)?;
        walked = if walked.is_empty() {
            name.to_string()
        } else {
            format!("{walked}.{name}")
        };
    }
    if bitfield || !bits.is_multiple_of(8) {
        return Err(OffsetsError::Bitfield {
            strukt: strukt.to_string(),
            path: path.to_string(),
        });
    }
    let found = type_size(btf, &ty).map_err(malformed)?;
    let offset = u32::try_from(bits / 8).map_err(|e| malformed(e.into()))?;
    Ok((offset, found))
}

fn find_struct(btf: &Btf, name: &str) -> Result<Type, OffsetsError> {
    btf.resolve_types_by_name(name)
        .ok()
        .and_then(|types| {
            types
                .into_iter()
                .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        })
        .ok_or_else(|| OffsetsError::NoStruct(name.to_string()))
}

/// A member found by name, with its bit offset from the start of the struct
/// it was looked up in.
struct Member {
    bit_offset: u64,
    bitfield: bool,
    ty: Type,
}

/// How deep anonymous members and arrays may nest. A kernel's nest a few
/// levels; a hostile or broken BTF whose types contain themselves made the
/// lookup recurse until the stack overflowed (found by the fuzz loop).
const MAX_NESTING: u32 = 32;

/// Finds member `name` of a struct/union, descending into anonymous members.
fn find_member(btf: &Btf, ty: &Type, name: &str, depth: u32) -> anyhow::Result<Option<Member>> {
    if depth > MAX_NESTING {
        anyhow::bail!("anonymous members nest deeper than {MAX_NESTING} levels");
    }
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for member in members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let bit_offset = u64::from(member.bit_offset());
        let bitfield = member.bitfield_size().is_some_and(|bits| bits != 0);
        if member_name == name {
            let ty = btf.resolve_chained_type(member)?;
            return Ok(Some(Member {
                bit_offset,
                bitfield,
                ty,
            }));
        }
        if member_name.is_empty() {
            let inner = strip_modifiers(btf, btf.resolve_chained_type(member)?)?;
            if let Some(found) = find_member(btf, &inner, name, depth + 1)? {
                return Ok(Some(Member {
                    bit_offset: bit_offset + found.bit_offset,
                    ..found
                }));
            }
        }
    }
    Ok(None)
}

/// Follows typedef/const/volatile/restrict/type-tag to the underlying type.
fn strip_modifiers(btf: &Btf, mut ty: Type) -> anyhow::Result<Type> {
    for _ in 0..32 {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) => btf.resolve_chained_type(t)?,
            Type::Restrict(t) => btf.resolve_chained_type(t)?,
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
    anyhow::bail!("type chain too deep")
}

fn type_size(btf: &Btf, ty: &Type) -> anyhow::Result<usize> {
    sized(btf, ty, 0)
}

fn sized(btf: &Btf, ty: &Type, depth: u32) -> anyhow::Result<usize> {
    if depth > MAX_NESTING {
        anyhow::bail!("arrays nest deeper than {MAX_NESTING} levels");
    }
    Ok(match ty {
        Type::Int(i) => i.size(),
        Type::Ptr(_) => 8,
        Type::Struct(s) | Type::Union(s) => s.size(),
        Type::Enum(e) => e.size(),
        Type::Enum64(e) => e.size(),
        Type::Array(a) => {
            let elem = strip_modifiers(btf, btf.resolve_chained_type(a)?)?;
            sized(btf, &elem, depth + 1)?
                .checked_mul(a.len())
                .ok_or_else(|| anyhow::anyhow!("array size overflows"))?
        }
        other => anyhow::bail!("unexpected {} type", other.name()),
    })
}
