//! What the programs record about a socket in CLOSE_WAIT, and what they
//! tell the daemon through the ring buffer.
use crate::TASK_COMM_LEN;

/// `SockRecord::flags`: the owner was learned in the kernel at connect()
/// (the SYN_SENT transition of a watched process), so this is an outbound
/// connection.
pub const REC_OUTBOUND: u16 = 1;
/// `SockRecord::flags`: a listener on the local port is known (`LISTENERS`,
/// looked up by the daemon when it reports the socket); the owner is the
/// process that called listen() (a hint: the acceptor may differ).
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

/// One socket that entered CLOSE_WAIT: the value of the kernel's `YOUNG`
/// map (every socket as it enters CLOSE_WAIT, until it leaves or the daemon
/// reports it) and of the `CLOSE_WAIT` map (sockets the daemon reported:
/// they stayed past the grace), both keyed by socket cookie, and the payload
/// of every event.
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
    /// The socket's cgroup v2 id (`sk_cgrp_data`): on systemd hosts its
    /// unit, on container hosts its container; 0 when unknown.
    pub cgroup: u64,
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
            cgroup: 0,
        }
    }
}

/// `Event::kind`: sockets entered CLOSE_WAIT while the daemon was not
/// watching `YOUNG` (the `ARMED` control was 0): time to look again. The
/// record is zeroed.
pub const EVENT_WAKE: u32 = 1;
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
    /// For `EVENT_LEAVE`: the record as the kernel maps held it, or a zeroed
    /// record carrying only the cookie when they had none (the socket entered
    /// CLOSE_WAIT before cwatch was loaded, or `YOUNG` was full).
    pub rec: SockRecord,
}
