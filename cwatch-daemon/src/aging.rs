/*!
Ages and the per-process / per-peer summaries the gauges are made of.

Ages use CLOCK_BOOTTIME, the clock the kernel stamps records with
(`bpf_ktime_get_boot_ns`), so a suspended host does not make a leak look
younger. The clock is injected so the arithmetic is tested without a kernel.
*/
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use crate::table::{Comm, Direction, SockEntry, SocketTable};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// CLOCK_BOOTTIME in nanoseconds.
    fn now_ns(&self) -> u64;
}

/// The real CLOCK_BOOTTIME.
pub struct BootClock;

impl Clock for BootClock {
    fn now_ns(&self) -> u64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        // Both fields are non-negative for CLOCK_BOOTTIME.
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }
}

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
    fn add(&mut self, age: Duration, leak_after: Duration) {
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

/// The summary by a walk of every socket (the table keeps the same numbers
/// up to date: [`SocketTable::summary`]).
pub fn summarize(table: &SocketTable, now_ns: u64, leak_after: Duration) -> Summary {
    summarize_where(table, now_ns, leak_after, |_| true)
}

/// [`summarize`] of the sockets (live and dead) that `keep` keeps.
pub fn summarize_where(
    table: &SocketTable,
    now_ns: u64,
    leak_after: Duration,
    mut keep: impl FnMut(&SockEntry) -> bool,
) -> Summary {
    let mut summary = Summary::default();
    for entry in table.iter().filter(|e| keep(e)) {
        let age = age(now_ns, entry.start_ns);
        summary
            .processes
            .entry(ProcessKey::of(entry))
            .or_default()
            .add(age, leak_after);
        summary
            .peers
            .entry(PeerKey::of(entry))
            .or_default()
            .add(age, leak_after);
    }
    for dead in table.dead().filter(|d| d.verified && keep(&d.sock)) {
        *summary.dead.entry(ProcessKey::of(&dead.sock)).or_default() += 1;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::record;

    const S: u64 = 1_000_000_000;

    /// (cookie, start_ns, owner)
    type Row<'a> = (u64, u64, Option<(u32, &'a str)>);

    fn table(entries: &[Row]) -> SocketTable {
        let mut t = SocketTable::new();
        for &(cookie, start, owner) in entries {
            t.insert(SockEntry::from_record(&record(cookie, start, owner)));
        }
        t
    }

    #[test]
    fn age_is_now_minus_start_and_never_negative() {
        assert_eq!(age(10 * S, 4 * S), Duration::from_secs(6));
        assert_eq!(age(4 * S, 10 * S), Duration::ZERO);
        assert!(is_leaked(
            Duration::from_secs(300),
            Duration::from_secs(300)
        ));
        assert!(!is_leaked(
            Duration::from_millis(299_999),
            Duration::from_secs(300)
        ));
    }

    #[test]
    fn groups_by_process_and_peer_with_leaked_and_oldest() {
        let t = table(&[
            (1, 100 * S, Some((10, "a"))),
            (2, 150 * S, Some((10, "a"))),
            (3, 195 * S, Some((11, "b"))),
            (4, 190 * S, None),
        ]);
        let s = summarize(&t, 200 * S, Duration::from_secs(60));
        let a = s
            .processes
            .iter()
            .find(|(k, _)| k.pid == Some(10))
            .unwrap()
            .1;
        assert_eq!(
            *a,
            GroupStats {
                sockets: 2,
                leaked: 1,
                oldest: Duration::from_secs(100)
            }
        );
        let unknown = s.processes.iter().find(|(k, _)| k.pid.is_none()).unwrap();
        assert_eq!(
            (unknown.0.pid_label(), unknown.0.comm_label()),
            (String::new(), "[unknown]".into())
        );
        assert_eq!(unknown.1.sockets, 1);
        // Outbound sockets group by peer port; the inbound one (no owner
        // learned at connect) by "*".
        assert_eq!(s.peers.len(), 2);
        let outbound = s
            .peers
            .iter()
            .find(|(k, _)| k.port == Some(7000))
            .unwrap()
            .1;
        assert_eq!((outbound.sockets, outbound.leaked), (3, 1));
        let inbound = s.peers.iter().find(|(k, _)| k.port.is_none()).unwrap();
        assert_eq!(inbound.0.port_label(), "*");
        assert_eq!(inbound.1.sockets, 1);
        let total: u64 = s.processes.values().map(|g| g.sockets).sum();
        assert_eq!(total, t.len() as u64, "every socket counted once");
    }

    #[test]
    fn empty_table_has_no_series() {
        assert_eq!(
            summarize(&SocketTable::new(), 5 * S, Duration::from_secs(1)),
            Summary::default()
        );
    }
}
