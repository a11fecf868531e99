//! The kernel struct offsets the programs read at, resolved by the daemon
//! from the running kernel's BTF.
/// Byte offsets of the kernel struct fields the programs read, resolved by the
/// daemon from the running kernel's BTF and handed to the programs as the
/// read-only global `OFFSETS` before load. Rust eBPF has no CO-RE, so nothing
/// here may be baked in at build time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock`: `__sk_common.skc_family` (u16).
    pub sk_family: u32,
    /// `struct sock`: `sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `struct sock`: `__sk_common.skc_num`, local port in host order (u16).
    pub sk_num: u32,
    /// `struct sock`: `__sk_common.skc_dport`, peer port, network order (u16).
    pub sk_dport: u32,
    /// `struct sock`: `__sk_common.skc_rcv_saddr` (be32).
    pub sk_rcv_saddr: u32,
    /// `struct sock`: `__sk_common.skc_daddr` (be32).
    pub sk_daddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub sk_v6_rcv_saddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_daddr` (16 bytes).
    pub sk_v6_daddr: u32,
    /// `struct sock`: `__sk_common.skc_net.net` (pointer).
    pub sk_net: u32,
    /// `struct net`: `ns.inum` (u32).
    pub net_ns_inum: u32,
    /// `struct task_struct`: `group_leader` (pointer).
    pub task_group_leader: u32,
    /// `struct task_struct`: `comm` (16 bytes).
    pub task_comm: u32,
    /// 1 when the kernel has the IPv6 fields (CONFIG_IPV6), else 0.
    pub has_ipv6: u32,
    /// `struct sock`: `sk_socket` (pointer; NULL while the socket waits in a
    /// listener's accept queue or after it was orphaned).
    pub sk_socket: u32,
    /// `struct socket_alloc`: `vfs_inode` minus `socket` (the inode that
    /// `/proc/<pid>/fd` shows as `socket:[N]` sits next to the socket).
    pub socket_inode: u32,
    /// `struct inode`: `i_ino` (unsigned long).
    pub inode_ino: u32,
    /// `struct socket`: `file` (pointer).
    pub socket_file: u32,
    /// `struct file`: `f_ref.refcnt` (6.13 and later) or `f_count` (before),
    /// 8 bytes; see `file_ref_kind`.
    pub file_ref: u32,
    /// How to read `file_ref`: one of `FILE_REF_*`.
    pub file_ref_kind: u32,
    /// `struct sock`: `sk_cgrp_data.cgroup` (pointer to the socket's cgroup
    /// v2); 0 with `has_cgroup` 0 when the kernel has no socket cgroups.
    pub sk_cgroup: u32,
    /// `struct cgroup`: `kn` (its `struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `struct kernfs_node`: `id` (u64: the cgroup id, the inode number of
    /// its directory in cgroupfs).
    pub kernfs_id: u32,
    /// 1 when the three cgroup fields above exist, else 0.
    pub has_cgroup: u32,
    pub _pad: u32,
}

/// `KernelOffsets::file_ref_kind`: no usable file reference count; every
/// socket leaving CLOSE_WAIT is treated as possibly still held.
pub const FILE_REF_UNKNOWN: u32 = 0;
/// `f_count` (atomic_long_t): 0 once the last reference is gone.
pub const FILE_REF_COUNT: u32 = 1;
/// `f_ref` (file_ref_t): 0 is one reference; negative once the last one is
/// gone (FILE_REF_NOREF, then FILE_REF_DEAD while the file is released).
pub const FILE_REF_BIASED: u32 = 2;
