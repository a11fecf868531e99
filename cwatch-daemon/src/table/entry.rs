/*!
One socket as the table keeps it: [`SockEntry`] (in CLOSE_WAIT) and
[`DeadEntry`] (left CLOSE_WAIT, still held), with who opened it
([`Direction`]), who holds it ([`Owner`], [`Holder`], [`Comm`]) and the
conversions to and from the kernel's [`SockRecord`].
*/
use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use cwatch_common::{
    AF_INET, AF_INET6, REC_ESTIMATED, REC_INBOUND, REC_OUTBOUND, REC_UNACCEPTED, SockRecord,
    TASK_COMM_LEN,
};

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// We connect()ed to the peer.
    Outbound,
    /// The peer connected to one of our listeners and we accepted it.
    Inbound,
    /// Still in a listener's accept queue: nobody ever called accept().
    Unaccepted,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Unaccepted => "unaccepted",
        }
    }
}

/// A process name as the kernel keeps it: up to 15 bytes, NUL padded. Kept
/// inline so a million sockets do not mean a million small allocations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm([u8; TASK_COMM_LEN]);

impl Comm {
    pub fn from_bytes(bytes: [u8; TASK_COMM_LEN]) -> Self {
        Self(bytes)
    }

    /// The name as text: its exact bytes, any that are not UTF-8 as `\xNN`
    /// (see [`crate::text::lossless`]).
    pub fn as_str(&self) -> Cow<'_, str> {
        crate::text::lossless(self.bytes())
    }

    /// The name's bytes, up to the first NUL.
    pub fn bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        &self.0[..len]
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The process holding a socket: thread-group id in the host pid namespace
/// and the group leader's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
}

/// A process holding a socket through one of its fds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    pub fd: i32,
    pub comm: Comm,
}

/// One socket in CLOSE_WAIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEntry {
    pub cookie: u64,
    /// CLOCK_BOOTTIME ns of the transition into CLOSE_WAIT.
    pub start_ns: u64,
    /// The start was not seen, only estimated.
    pub age_estimated: bool,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub netns: u32,
    /// Socket inode (`socket:[N]`); 0 while unaccepted.
    pub inode: u64,
    /// The socket's cgroup v2 id (0: unknown): where its holder is likely
    /// to be.
    pub cgroup: u64,
    pub direction: Direction,
    /// The process the kernel saw connect() or listen(): right at once for
    /// outbound sockets, the listener for inbound ones; used until the fd
    /// holders are known, and when no fd holds the socket.
    pub hint: Option<Owner>,
    /// Every (process, fd) holding the socket, sorted by pid then fd.
    pub holders: Vec<Holder>,
    /// Holders were looked up at least once since the last change.
    pub resolved: bool,
    /// Who the gauges count it under: the lowest-pid holder, else the hint.
    pub owner: Option<Owner>,
}

impl SockEntry {
    /// The entry for a kernel record. IPv4-mapped IPv6 addresses become IPv4.
    pub fn from_record(rec: &SockRecord) -> Self {
        let hint = (rec.owner_tgid != 0).then(|| Owner {
            pid: rec.owner_tgid,
            comm: Comm::from_bytes(rec.owner_comm),
        });
        let direction = if rec.flags & REC_OUTBOUND != 0 {
            Direction::Outbound
        } else if rec.flags & REC_UNACCEPTED != 0 {
            Direction::Unaccepted
        } else {
            // REC_INBOUND (its listener is known), or a socket whose owner
            // the kernel never saw because it predates cwatch.
            Direction::Inbound
        };
        Self {
            cookie: rec.cookie,
            start_ns: rec.start_ns,
            age_estimated: rec.flags & REC_ESTIMATED != 0,
            local: SocketAddr::new(ip(rec.family, &rec.local_addr), rec.local_port),
            peer: SocketAddr::new(ip(rec.family, &rec.peer_addr), rec.peer_port),
            netns: rec.netns,
            inode: rec.inode,
            cgroup: rec.cgroup,
            direction,
            hint,
            holders: Vec::new(),
            resolved: false,
            owner: hint,
        }
    }

    /// The kernel record for this entry (for re-inserting into the map):
    /// everything [`SockEntry::from_record`] reads back — the owner (as the
    /// next start's hint), the direction, and whether the start is an
    /// estimate.
    pub fn to_record(&self) -> SockRecord {
        let e = self;
        let mut rec = SockRecord::zeroed();
        rec.cookie = e.cookie;
        rec.start_ns = e.start_ns;
        rec.inode = e.inode;
        rec.netns = e.netns;
        rec.cgroup = e.cgroup;
        let put = |addr: &SocketAddr, out: &mut [u8; 16]| match addr.ip() {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => *out = v6.octets(),
        };
        rec.family = if e.local.is_ipv4() { AF_INET } else { AF_INET6 };
        put(&e.local, &mut rec.local_addr);
        put(&e.peer, &mut rec.peer_addr);
        rec.local_port = e.local.port();
        rec.peer_port = e.peer.port();
        if let Some(owner) = e.owner {
            rec.owner_tgid = owner.pid;
            rec.owner_comm = owner.comm.0;
        }
        rec.flags = match e.direction {
            Direction::Outbound => REC_OUTBOUND,
            Direction::Inbound => REC_INBOUND,
            Direction::Unaccepted => REC_UNACCEPTED,
        };
        if e.age_estimated {
            rec.flags |= REC_ESTIMATED;
        }
        rec
    }

    /// Replaces the holders (sorted, deduplicated) and recomputes the owner.
    pub fn set_holders(&mut self, mut holders: Vec<Holder>) {
        holders.sort_unstable();
        holders.dedup();
        holders.shrink_to_fit();
        self.holders = holders;
        self.resolved = true;
        self.owner = self
            .holders
            .first()
            .map(|h| Owner {
                pid: h.pid,
                comm: h.comm,
            })
            .or(self.hint);
    }

    /// The fd of the owner, when a holder is known.
    pub fn owner_fd(&self) -> Option<i32> {
        let owner = self.owner?;
        self.holders
            .iter()
            .find(|h| h.pid == owner.pid)
            .map(|h| h.fd)
    }
}

/// A socket that left CLOSE_WAIT (the kernel closed it, or it was shut down
/// without close()) while a process may still hold its fd. Kept until the
/// kernel destroys it (`tcp_destroy_sock`), i.e. until the last fd is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadEntry {
    pub sock: SockEntry,
    /// CLOCK_BOOTTIME ns when it left CLOSE_WAIT.
    pub left_ns: u64,
    /// The state it left CLOSE_WAIT for (LAST_ACK or CLOSE).
    pub newstate: u16,
    /// The holders were checked after it left: it is a leaked fd, not a
    /// socket on its way to a normal close.
    pub verified: bool,
}

impl DeadEntry {
    /// `sock` left CLOSE_WAIT for `newstate` at `left_ns`; not verified yet.
    pub fn left(sock: SockEntry, left_ns: u64, newstate: u16) -> Self {
        Self {
            sock,
            left_ns,
            newstate,
            verified: false,
        }
    }
}

/// An address as users read it: IPv4, or IPv6 unless it is IPv4-mapped.
/// An unknown family (the kernel read failed) shows as 0.0.0.0.
fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}
