/*!
What the kernel's own socket table shows, through [`sockdiag`] in every
network namespace ([`netns`]): the CLOSE_WAIT sockets reconciliation
compares with the table, the LAST_ACK ones `LINGER` pruning spares, and the
listeners that tell an accepted socket from a connected one.

Fetching ([`kernel_view`]: a dump per namespace) is apart from building the
view ([`KernelView::from_dumps`]), which is unit-tested on made-up dumps.
*/
pub mod netns;
pub mod sockdiag;

use std::collections::{HashMap, HashSet};

use cwatch_common::{SockRecord, tcp_state};
use netlink_packet_sock_diag::inet::{ExtensionFlags, StateFlags};
use tracing::warn;

use self::sockdiag::DiagSocket;
use crate::{
    owners::ProcRoot,
    table::{Direction, SockEntry},
    telemetry::Source,
};

/// What sock_diag showed, across namespaces.
#[derive(Debug, Default)]
pub struct KernelView {
    /// CLOSE_WAIT sockets by cookie, with their namespace (hashbrown's
    /// fast hasher: a million cookies hashed with SipHash cost a third of a
    /// second at start-up; cookies are the kernel's, not an attacker's).
    pub close_wait: hashbrown::HashMap<u64, (DiagSocket, u32)>,
    /// Cookies in LAST_ACK (left CLOSE_WAIT, waiting for the peer's ACK).
    pub last_ack: HashSet<u64>,
    /// (netns, port) of every listener.
    pub listeners: HashSet<(u32, u16)>,
    /// `net.ipv4.ip_local_port_range` (low, high): where connect() picks
    /// local ports.
    pub ephemeral: (u16, u16),
    /// Namespaces that answered: only their sockets can be called gone.
    pub covered: HashSet<u32>,
    /// What failed on the way (a namespace not entered, a dump refused),
    /// for the failure counters; the rest of the view stands.
    pub failures: Vec<Source>,
}

/// Dumps every namespace's CLOSE_WAIT, LAST_ACK and LISTEN TCP sockets;
/// `with_info`: with tcp_info, for estimating the start of sockets cwatch
/// never saw enter CLOSE_WAIT (needed only when some may be added).
pub fn kernel_view(proc: &ProcRoot, with_info: bool) -> KernelView {
    let states = StateFlags::CLOSE_WAIT | StateFlags::LAST_ACK | StateFlags::LISTEN;
    let extensions = if with_info {
        ExtensionFlags::INFO
    } else {
        ExtensionFlags::empty()
    };
    let mut failures = Vec::new();
    let dumps = netns::in_each(netns::list(proc), move || {
        sockdiag::dump_with(states, extensions)
    })
    .into_iter()
    .map(|(ns, result)| {
        if let Err(err) = &result {
            failures.push(netns::failure_source(err));
            warn!(netns = ns.inode, path = %ns.path.display(), "sock_diag: {err}");
        }
        (ns.inode as u32, result.ok())
    });
    let mut view = KernelView::from_dumps(dumps, proc.ephemeral_ports());
    view.failures = failures;
    view
}

impl KernelView {
    /// The view of one dump per namespace (`None`: that namespace did not
    /// answer, so none of its sockets can be called gone).
    pub fn from_dumps(
        dumps: impl IntoIterator<Item = (u32, Option<Vec<DiagSocket>>)>,
        ephemeral: (u16, u16),
    ) -> Self {
        let mut view = KernelView {
            ephemeral,
            ..KernelView::default()
        };
        for (inum, sockets) in dumps {
            let Some(sockets) = sockets else { continue };
            view.covered.insert(inum);
            // Most of a big dump is CLOSE_WAIT: room for all of it at once
            // (growing a map of a million sockets copies it, twice over).
            view.close_wait.reserve(sockets.len());
            for s in sockets {
                match u32::from(s.state) {
                    tcp_state::CLOSE_WAIT => {
                        view.close_wait.insert(s.cookie, (s, inum));
                    }
                    tcp_state::LAST_ACK => {
                        view.last_ack.insert(s.cookie);
                    }
                    tcp_state::LISTEN => {
                        view.listeners.insert((inum, s.local.port()));
                    }
                    _ => {}
                }
            }
        }
        view
    }

    /// Whether a socket recorded in namespace `netns` as in CLOSE_WAIT since
    /// `start_ns` is gone from it: its namespace answered, the dump (begun
    /// at `dump_start_ns`) did not show it, and it is not newer than the
    /// dump.
    pub fn shows_gone(&self, cookie: u64, netns: u32, start_ns: u64, dump_start_ns: u64) -> bool {
        self.covered.contains(&netns)
            && !self.close_wait.contains_key(&cookie)
            && start_ns < dump_start_ns
    }

    /// The cookies of `records` the view shows gone ([`Self::shows_gone`]).
    pub fn gone_from(&self, records: &HashMap<u64, SockRecord>, dump_start_ns: u64) -> Vec<u64> {
        records
            .iter()
            .filter(|(cookie, rec)| {
                self.shows_gone(**cookie, rec.netns, rec.start_ns, dump_start_ns)
            })
            .map(|(cookie, _)| *cookie)
            .collect()
    }

    pub fn is_ephemeral(&self, port: u16) -> bool {
        (self.ephemeral.0..=self.ephemeral.1).contains(&port)
    }
}

/// The table entry for a socket only sock_diag told us about.
pub fn entry_from_diag(d: &DiagSocket, netns: u32, now_ns: u64, view: &KernelView) -> SockEntry {
    let estimated_start = match d.last_ack_recv {
        Some(ago) => now_ns.saturating_sub(ago.as_nanos() as u64),
        None => now_ns,
    };
    let mut rec = SockRecord::zeroed();
    rec.cookie = d.cookie;
    let mut entry = SockEntry::from_record(&rec);
    entry.start_ns = estimated_start;
    entry.age_estimated = true;
    entry.local = d.local;
    entry.peer = d.peer;
    entry.netns = netns;
    entry.inode = d.inode;
    entry.direction = if d.inode == 0 {
        Direction::Unaccepted
    } else if view.listeners.contains(&(netns, d.local.port())) {
        Direction::Inbound
    } else if view.is_ephemeral(d.peer.port()) && !view.is_ephemeral(d.local.port()) {
        // The listener is gone, but the remote end picked the ephemeral
        // port: we accepted this one. Grouping it by the peer's ephemeral
        // port would make a series per connection.
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(cookie: u64, state: u32, local: &str) -> DiagSocket {
        DiagSocket {
            cookie,
            state: state as u8,
            local: local.parse().unwrap(),
            peer: "127.0.0.2:45000".parse().unwrap(),
            inode: 10 + cookie,
            uid: 0,
            last_ack_recv: None,
            keepalive: None,
        }
    }

    #[test]
    fn dumps_become_the_view_and_silent_namespaces_are_not_covered() {
        let view = KernelView::from_dumps(
            [
                (
                    1,
                    Some(vec![
                        sock(1, tcp_state::CLOSE_WAIT, "127.0.0.1:7000"),
                        sock(2, tcp_state::LAST_ACK, "127.0.0.1:7000"),
                        sock(3, tcp_state::LISTEN, "0.0.0.0:7000"),
                        sock(4, tcp_state::ESTABLISHED, "127.0.0.1:7001"),
                    ]),
                ),
                (2, None),
            ],
            (32768, 60999),
        );
        assert_eq!(view.close_wait.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(view.close_wait[&1].1, 1, "with its namespace");
        assert!(view.last_ack.contains(&2) && view.last_ack.len() == 1);
        assert_eq!(view.listeners, HashSet::from([(1, 7000)]));
        assert_eq!(
            view.covered,
            HashSet::from([1]),
            "namespace 2 did not answer"
        );
        assert!(view.is_ephemeral(45000) && !view.is_ephemeral(7000));
    }
}
