//! Reading kernel structs at offsets resolved from the running kernel's BTF.
//!
//! The daemon fills `OFFSETS` before loading. It lands in .rodata, which aya
//! freezes, so the verifier sees each offset as a constant: `sk + offset` on
//! the tracepoint's BTF-typed `struct sock *` is then a plain load that the
//! verifier checks against the kernel's BTF and turns into a fault-tolerant
//! (PROBE_MEM) load. No helper call per field.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_probe_read_kernel,
    generated::bpf_get_current_task_btf,
};
use cwatch_common::{
    AF_INET, AF_INET6, FILE_REF_BIASED, FILE_REF_COUNT, KernelOffsets, SockRecord, TASK_COMM_LEN,
};

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
    net_ns_inum: 0,
    task_group_leader: 0,
    task_comm: 0,
    has_ipv6: 0,
    sk_socket: 0,
    socket_inode: 0,
    inode_ino: 0,
    socket_file: 0,
    file_ref: 0,
    file_ref_kind: 0,
    sk_cgroup: 0,
    cgroup_kn: 0,
    kernfs_id: 0,
    has_cgroup: 0,
    _pad: 0,
};

/// Reads one field of `OFFSETS`, volatile so the compiler cannot fold the
/// zeros above.
macro_rules! off {
    ($field:ident) => {
        offset(&OFFSETS.$field)
    };
}

#[inline(always)]
fn offset(field: &u32) -> usize {
    // SAFETY: a reference to a field of the `OFFSETS` static: valid and
    // aligned.
    unsafe { core::ptr::read_volatile(field) as usize }
}

/// A `T` at `base + offset`.
///
/// # Safety
/// `base` must be a BTF-typed kernel pointer (the verifier rejects anything
/// else) and `offset` one of `OFFSETS` for a field of `T`'s size.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: the caller's contract; the verifier makes the load
    // fault-tolerant (a fault reads zeros).
    unsafe { core::ptr::read(base.add(offset).cast::<T>()) }
}

/// An IPv6 address field (`struct in6_addr`, 4-byte aligned), read as four
/// words: volatile, so the compiler cannot turn the copy into a `memmove`
/// call from the socket (the verifier rejects one instruction reading from
/// both kernel and map memory).
///
/// # Safety
/// As for [`load`].
#[inline(always)]
unsafe fn load_in6(base: *const u8, offset: usize) -> [u8; 16] {
    let word = |i: usize| -> u32 {
        // SAFETY: the caller's contract, for each word of the field.
        unsafe { core::ptr::read_volatile(base.add(offset + 4 * i).cast::<u32>()) }
    };
    let words = [word(0), word(1), word(2), word(3)];
    // SAFETY: same size, any bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// The tracepoint's BTF-typed `struct sock *`. Only made from a tp_btf
/// program's argument ([`Sock::from_btf`]), so every field read below is a
/// load the verifier checks against the kernel's BTF and makes
/// fault-tolerant; the readers themselves are safe to call.
#[derive(Clone, Copy)]
pub struct Sock(*mut c_void);

impl Sock {
    /// # Safety
    /// `ptr` must be a `struct sock *` argument of the running tp_btf
    /// program, as the kernel passed it (the verifier rejects loads from any
    /// other pointer at these offsets).
    #[inline(always)]
    pub unsafe fn from_btf(ptr: *mut c_void) -> Self {
        Self(ptr)
    }

    /// For helpers that take the socket (`bpf_sk_storage_get`, cookies).
    #[inline(always)]
    pub fn as_ptr(self) -> *mut c_void {
        self.0
    }

    #[inline(always)]
    fn base(self) -> *const u8 {
        self.0.cast()
    }

    /// The socket cookie (`ss -e`'s `sk:`), created on first use.
    #[inline(always)]
    pub fn cookie(self) -> u64 {
        // SAFETY: a BTF-typed socket, which is what the helper takes in
        // tracing programs.
        unsafe { bpf_get_socket_cookie(self.0) }
    }

    /// `sk->sk_protocol`.
    #[inline(always)]
    pub fn protocol(self) -> u16 {
        // SAFETY: a BTF-typed socket and one of OFFSETS (see `load`).
        unsafe { load::<u16>(self.base(), off!(sk_protocol)) }
    }

    /// `sk->sk_num`: the local port, host order.
    #[inline(always)]
    pub fn local_port(self) -> u16 {
        // SAFETY: as in `protocol`.
        unsafe { load::<u16>(self.base(), off!(sk_num)) }
    }

    /// Inode number of the socket's network namespace (0 if unreadable).
    #[inline(always)]
    pub fn netns(self) -> u32 {
        // SAFETY: `sk_net` is a BTF-typed `struct net *` read from the
        // socket; null is checked before it is followed.
        unsafe {
            let net = load::<*const u8>(self.base(), off!(sk_net));
            if net.is_null() {
                return 0;
            }
            load::<u32>(net, off!(net_ns_inum))
        }
    }

    /// Fills family, addresses, ports and network namespace of `rec`, every
    /// byte of the addresses (a record may be written over an older one).
    #[inline(always)]
    pub fn fill_endpoints(self, rec: &mut SockRecord) {
        let sk = self.base();
        let v4 = |word: u32| -> [u8; 16] {
            // SAFETY: same size, any bit pattern is valid.
            unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([word, 0, 0, 0]) }
        };
        // SAFETY: fields of the BTF-typed socket at OFFSETS; the IPv6 ones
        // only where the kernel has them (`has_ipv6`).
        unsafe {
            rec.family = load::<u16>(sk, off!(sk_family));
            rec.peer_port = u16::from_be(load::<u16>(sk, off!(sk_dport)));
            if rec.family == AF_INET {
                rec.local_addr = v4(load::<u32>(sk, off!(sk_rcv_saddr)));
                rec.peer_addr = v4(load::<u32>(sk, off!(sk_daddr)));
            } else if rec.family == AF_INET6 && off!(has_ipv6) != 0 {
                rec.local_addr = load_in6(sk, off!(sk_v6_rcv_saddr));
                rec.peer_addr = load_in6(sk, off!(sk_v6_daddr));
            } else {
                rec.local_addr = v4(0);
                rec.peer_addr = v4(0);
            }
        }
        rec.local_port = self.local_port();
        rec.netns = self.netns();
    }

    /// Whether the socket's file is being released: the state change
    /// happens inside the last close() of its fd (close, exit, dup2,
    /// exec...), so no process holds it any more. `false` when the socket
    /// still has a live file (reset, keepalive, `ss -K`, shutdown() with the
    /// fd kept) or when the kernel's reference count cannot be read
    /// (`FILE_REF_UNKNOWN`).
    #[inline(always)]
    pub fn fd_released(self) -> bool {
        let kind = off!(file_ref_kind) as u32;
        if kind != FILE_REF_BIASED && kind != FILE_REF_COUNT {
            return false;
        }
        // SAFETY: `sk_socket` and `file` are BTF-typed pointers read from
        // the socket, each checked for null before it is followed.
        unsafe {
            let socket = load::<*const u8>(self.base(), off!(sk_socket));
            if socket.is_null() {
                return true; // orphaned: no file any more
            }
            let file = load::<*const u8>(socket, off!(socket_file));
            if file.is_null() {
                return true;
            }
            let refs = load::<i64>(file, off!(file_ref));
            if kind == FILE_REF_BIASED {
                refs < 0
            } else {
                refs == 0
            }
        }
    }

    /// The socket's cgroup v2 id (0 when the kernel has no socket cgroups).
    #[inline(always)]
    pub fn cgroup_id(self) -> u64 {
        if off!(has_cgroup) == 0 {
            return 0;
        }
        // SAFETY: `sk_cgrp_data.cgroup` and `cgroup.kn` are BTF-typed
        // pointers read from the socket, each checked for null before it is
        // followed.
        unsafe {
            let cgroup = load::<*const u8>(self.base(), off!(sk_cgroup));
            if cgroup.is_null() {
                return 0;
            }
            let kn = load::<*const u8>(cgroup, off!(cgroup_kn));
            if kn.is_null() {
                return 0;
            }
            load::<u64>(kn, off!(kernfs_id))
        }
    }

    /// The inode number of the socket's `struct socket`, or `None` when it
    /// has none: a socket still waiting in a listener's accept queue.
    #[inline(always)]
    pub fn socket_inode(self) -> Option<u64> {
        // SAFETY: `sk_socket` is checked for null. The inode sits at a fixed
        // distance from the socket in `struct socket_alloc { struct socket
        // socket; struct inode vfs_inode; }`, beyond what the verifier lets a
        // `struct socket *` reach directly: it is copied with the helper,
        // which fails (reading 0) rather than faulting.
        unsafe {
            let socket = load::<*const u8>(self.base(), off!(sk_socket));
            if socket.is_null() {
                return None;
            }
            let ino = socket
                .add(off!(socket_inode) + off!(inode_ino))
                .cast::<u64>();
            Some(bpf_probe_read_kernel(ino).unwrap_or_else(|err| {
                crate::log::read_failed("the inode", self.cookie(), i64::from(err));
                0
            }))
        }
    }
}

/// The process name of the current thread's group leader (`comm` of the
/// current task is the thread's name, which is not what users look for).
#[inline(always)]
pub fn leader_comm() -> [u8; TASK_COMM_LEN] {
    // SAFETY: the current task is BTF-typed (`bpf_get_current_task_btf`);
    // `group_leader` is checked for null before it is followed; the two
    // words of `comm` are any bytes.
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let leader = load::<*const u8>(task, off!(task_group_leader));
        if leader.is_null() {
            return [0; TASK_COMM_LEN];
        }
        let words: [u64; 2] = load(leader, off!(task_comm));
        core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(words)
    }
}

/// Thread-group id (the pid users see) of the current task.
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}
