/*!
Types shared by the kernel side (`cwatch-ebpf`) and the daemon (`cwatch-daemon`).

Everything here is `#[repr(C)]` and `Copy`: the eBPF programs write these
structs into maps and the ring buffer, the daemon reads the same bytes back.
Changing a layout means changing both sides at once; the size assertions at
the bottom catch accidental drift.
*/
#![no_std]

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;

    /// The name `ss` prints for a state, upper-case with underscores.
    pub fn name(state: u32) -> &'static str {
        match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            NEW_SYN_RECV => "NEW_SYN_RECV",
            _ => "UNKNOWN",
        }
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const TASK_COMM_LEN: usize = 16;

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

/// `SockRecord::flags`: the owner was learned in the kernel at connect()
/// (the SYN_SENT transition), so this is an outbound connection.
pub const REC_OUTBOUND: u16 = 1;
/// `SockRecord::flags`: a listener on the local port is known (`LISTENERS`);
/// the owner is the process that called listen() (a hint: the acceptor may
/// differ).
pub const REC_INBOUND: u16 = 2;
/// `SockRecord::flags`: no `struct socket` yet, i.e. still in the listener's
/// accept queue: nobody called accept() on it.
pub const REC_UNACCEPTED: u16 = 4;
/// `SockRecord::flags`: `start_ns` is an estimate (the socket was found by
/// reconciliation, not seen entering CLOSE_WAIT): written by the daemon
/// when it records such a socket in the map, so its next start keeps
/// saying so, and kept out of the duration histogram.
pub const REC_ESTIMATED: u16 = 16;
/// `SockRecord::flags` of a leave event: the socket left CLOSE_WAIT because
/// its file was released (the last fd closed): no process can still hold
/// it, so it is not a dead socket held.
pub const REC_RELEASED: u16 = 8;

/// One socket that entered CLOSE_WAIT. The value of the kernel's
/// `CLOSE_WAIT` map (key: socket cookie) and the payload of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRecord {
    /// The kernel's socket cookie (`ss -e` prints it as `sk:<hex>`).
    pub cookie: u64,
    /// CLOCK_BOOTTIME ns of the transition into CLOSE_WAIT; 0 = unknown.
    pub start_ns: u64,
    /// IPv4 in the first 4 bytes (network order) or IPv6, per `family`.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// Inode number of the socket (`socket:[N]` in `/proc/<pid>/fd`); 0 when
    /// it has no `struct socket` (unaccepted).
    pub inode: u64,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Thread-group id (host pid namespace) of the owner; 0 = unknown.
    pub owner_tgid: u32,
    /// Process name of the owner's group leader, NUL padded.
    pub owner_comm: [u8; TASK_COMM_LEN],
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub peer_port: u16,
    pub family: u16,
    /// `REC_*` bits.
    pub flags: u16,
}

impl SockRecord {
    pub const fn zeroed() -> Self {
        Self {
            cookie: 0,
            start_ns: 0,
            local_addr: [0; 16],
            peer_addr: [0; 16],
            inode: 0,
            netns: 0,
            owner_tgid: 0,
            owner_comm: [0; TASK_COMM_LEN],
            local_port: 0,
            peer_port: 0,
            family: 0,
            flags: 0,
        }
    }
}

/// `Owner::flags`: `tgid` called connect() on this socket.
pub const OWNER_CONNECT: u32 = 1;
/// `Owner::flags`: `tgid` called listen() on the socket (a `LISTENERS`
/// value; accepted sockets look their listener up by port).
pub const OWNER_LISTEN: u32 = 2;
/// `Owner::flags`: the socket left CLOSE_WAIT and waits in `LINGER` for
/// `tcp_destroy_sock`.
pub const OWNER_LINGER: u32 = 4;

/// What the kernel knows about a socket's owner, kept in the `OWNERS` socket
/// storage: recorded at connect() or listen() in the owner's own context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    /// `OWNER_*` bits.
    pub flags: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Key of the `LISTENERS` map: a listening port in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Value of the `LISTENERS` map: who called listen(), and on which socket
/// (so that one listener closing does not forget another on the same port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub cookie: u64,
    pub owner: Owner,
}

/// `Event::kind`: the socket entered CLOSE_WAIT.
pub const EVENT_ENTER: u32 = 1;
/// `Event::kind`: the socket left CLOSE_WAIT (to LAST_ACK or CLOSE).
pub const EVENT_LEAVE: u32 = 2;
/// `Event::kind`: a socket that had left CLOSE_WAIT was destroyed
/// (`tcp_destroy_sock`): no fd holds it any more.
pub const EVENT_DESTROY: u32 = 3;

/// What the programs send through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub oldstate: u16,
    pub newstate: u16,
    /// Thread-group id of the task the event happened in (0 in softirq
    /// context is not distinguishable from the idle task; treat as a hint).
    pub tgid: u32,
    pub _pad: u32,
    /// CLOCK_BOOTTIME ns when the event happened.
    pub ts_ns: u64,
    /// For `EVENT_LEAVE`: the record as the kernel map held it, or a zeroed
    /// record carrying only the cookie when the kernel had none (the socket
    /// entered CLOSE_WAIT before cwatch was loaded).
    pub rec: SockRecord,
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// TCP transitions into CLOSE_WAIT.
    pub const TRANSITIONS: u32 = 0;
    /// TCP transitions out of CLOSE_WAIT (to LAST_ACK or CLOSE).
    pub const CLOSED: u32 = 1;
    /// Ring buffer reservations that failed: events the daemon never saw.
    pub const EVENTS_LOST: u32 = 2;
    /// Inserts into `CLOSE_WAIT` that failed (map full).
    pub const RECORDS_FULL: u32 = 3;
    /// Owners that could not be stored (socket storage allocation failed).
    pub const OWNERS_FULL: u32 = 4;
    /// Inserts into `LINGER` that failed (map full).
    pub const LINGER_FULL: u32 = 5;
    /// Number of counters.
    pub const LEN: u32 = 6;
}

/// Version of the pinned maps' layout (`CLOSE_WAIT`, `LINGER`, `OWNERS`,
/// `LISTENERS`),
/// stored in the pinned `LAYOUT` map. Bump it whenever `SockRecord`, `Event`
/// or `Owner` change meaning, even at the same size: a daemon that finds
/// another version in the pin directory rebuilds the maps.
pub const LAYOUT_VERSION: u32 = 3;

/// Names of the maps and programs in the object, shared so both sides agree.
pub mod names {
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_CLOSE_WAIT: &str = "CLOSE_WAIT";
    pub const MAP_OWNERS: &str = "OWNERS";
    pub const MAP_COUNTERS: &str = "COUNTERS";
    pub const MAP_LINGER: &str = "LINGER";
    pub const MAP_LISTENERS: &str = "LISTENERS";
    pub const MAP_LAYOUT: &str = "LAYOUT";
    pub const GLOBAL_OFFSETS: &str = "OFFSETS";
    pub const PROG_SET_STATE: &str = "inet_sock_set_state";
    pub const PROG_DESTROY: &str = "tcp_destroy_sock";
}

const _: () = assert!(core::mem::size_of::<SockRecord>() == 88);
const _: () = assert!(core::mem::size_of::<Event>() == 112);
const _: () = assert!(core::mem::size_of::<Owner>() == 24);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 80);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);
const _: () = assert!(core::mem::size_of::<Listener>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY, for each impl below: the type is #[repr(C)] and Copy, holds
    // only integers and byte arrays (any bit pattern is valid), and has no
    // padding bytes that could be uninitialised (the size assertions above).
    // SAFETY: see above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockRecord {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ListenerKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Listener {}
}
