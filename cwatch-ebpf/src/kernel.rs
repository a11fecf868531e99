//! Reading kernel structs at offsets resolved from the running kernel's BTF.
//!
//! The daemon fills `OFFSETS` before loading (it lands in .rodata, which is
//! frozen, so the verifier sees constants). Every read goes through
//! `bpf_probe_read_kernel`, which turns a bad pointer into an error instead of
//! a verifier rejection.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use cwatch_common::{AF_INET, AF_INET6, KernelOffsets, SockRecord, TASK_COMM_LEN};

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    sk_family: 0,
    sk_protocol: 0,
    sk_num: 0,
    sk_dport: 0,
    sk_rcv_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_net: 0,
    sk_cookie: 0,
    net_ns_inum: 0,
    task_group_leader: 0,
    task_comm: 0,
    has_ipv6: 0,
};

/// Reads one field of `OFFSETS`, volatile so the compiler cannot fold the
/// zeros above.
macro_rules! off {
    ($field:ident) => {
        offset(&raw const OFFSETS.$field)
    };
}

#[inline(always)]
fn offset(field: *const u32) -> usize {
    // SAFETY: `field` points into the `OFFSETS` static.
    unsafe { core::ptr::read_volatile(field) as usize }
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: usize) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address at run time.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset).cast::<T>()) }
}

/// `sk->sk_protocol`.
#[inline(always)]
pub fn protocol(sk: *const u8) -> Result<u16, i32> {
    unsafe { read::<u16>(sk, off!(sk_protocol)) }
}

/// `sk->__sk_common.skc_cookie`: 0 while no cookie was ever made for it.
#[inline(always)]
pub fn cookie_if_made(sk: *const u8) -> Result<u64, i32> {
    unsafe { read::<u64>(sk, off!(sk_cookie)) }
}

/// Fills family, addresses, ports and network namespace of `rec` from `sk`.
#[inline(always)]
pub fn fill_endpoints(sk: *const u8, rec: &mut SockRecord) -> Result<(), i32> {
    unsafe {
        rec.family = read::<u16>(sk, off!(sk_family))?;
        rec.local_port = read::<u16>(sk, off!(sk_num))?;
        rec.peer_port = u16::from_be(read::<u16>(sk, off!(sk_dport))?);
        if rec.family == AF_INET {
            let local = read::<[u8; 4]>(sk, off!(sk_rcv_saddr))?;
            let peer = read::<[u8; 4]>(sk, off!(sk_daddr))?;
            rec.local_addr[..4].copy_from_slice(&local);
            rec.peer_addr[..4].copy_from_slice(&peer);
        } else if rec.family == AF_INET6 && off!(has_ipv6) != 0 {
            rec.local_addr = read::<[u8; 16]>(sk, off!(sk_v6_rcv_saddr))?;
            rec.peer_addr = read::<[u8; 16]>(sk, off!(sk_v6_daddr))?;
        }
        let net = read::<*const u8>(sk, off!(sk_net))?;
        rec.netns = read::<u32>(net, off!(net_ns_inum))?;
    }
    Ok(())
}

/// The process name of the current thread's group leader (`comm` of the
/// current task is the thread's name, which is not what users look for).
#[inline(always)]
pub fn leader_comm() -> Result<[u8; TASK_COMM_LEN], i32> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let leader = read::<*const u8>(task, off!(task_group_leader))?;
        read::<[u8; TASK_COMM_LEN]>(leader, off!(task_comm))
    }
}
