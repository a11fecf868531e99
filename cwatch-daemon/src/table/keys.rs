/*!
What the gauges are made of: ages, the label values of the per-process and
per-peer groups ([`ProcessKey`], [`PeerKey`]), one group's numbers
([`GroupStats`]) and a [`Summary`] of them all at one instant.
*/
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use super::entry::{Comm, Direction, SockEntry};

/// Age of a socket whose CLOSE_WAIT started at `start_ns`.
pub fn age(now_ns: u64, start_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(start_ns))
}

/// A socket is leaked when its age is at least leak-after.
pub fn is_leaked(age: Duration, leak_after: Duration) -> bool {
    age >= leak_after
}

/// Label values of the per-process gauges. `pid: None` is the unattributed
/// group (`pid=""`, `comm="[unknown]"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessKey {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
}

/// Label values of the per-peer gauges. `port: None` is an inbound socket,
/// whose remote port is ephemeral (`peer_port="*"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl ProcessKey {
    pub fn of(entry: &SockEntry) -> Self {
        match entry.owner {
            Some(owner) => Self {
                pid: Some(owner.pid),
                comm: Some(owner.comm),
            },
            None => Self {
                pid: None,
                comm: None,
            },
        }
    }

    pub fn pid_label(&self) -> String {
        self.pid.map(|p| p.to_string()).unwrap_or_default()
    }

    pub fn comm_label(&self) -> String {
        match &self.comm {
            Some(comm) => comm.as_str().into_owned(),
            None => "[unknown]".to_string(),
        }
    }
}

impl PeerKey {
    pub fn of(entry: &SockEntry) -> Self {
        let port = match entry.direction {
            Direction::Outbound => Some(entry.peer.port()),
            Direction::Inbound | Direction::Unaccepted => None,
        };
        Self {
            addr: entry.peer.ip(),
            port,
        }
    }

    pub fn port_label(&self) -> String {
        self.port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "*".into())
    }
}

/// What one group's gauges show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub sockets: u64,
    pub leaked: u64,
    pub oldest: Duration,
}

impl GroupStats {
    pub(super) fn add(&mut self, age: Duration, leak_after: Duration) {
        self.sockets += 1;
        if is_leaked(age, leak_after) {
            self.leaked += 1;
        }
        self.oldest = self.oldest.max(age);
    }
}

/// Gauges by process and by peer, at one instant. Only groups with at least
/// one socket appear: a group that drops to zero disappears from /metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub processes: BTreeMap<ProcessKey, GroupStats>,
    pub peers: BTreeMap<PeerKey, GroupStats>,
    /// Dead sockets whose fd is still held, by holding process.
    pub dead: BTreeMap<ProcessKey, u64>,
}
