/*!
A last look at the sockets the young scanner just reported: are they still
in CLOSE_WAIT? A young record can outlive its socket when the socket's way
out of CLOSE_WAIT goes unseen (found by the soak: about one in five million
churned loopback connections on 6.18, where neither `inet_sock_set_state`
nor `tcp_destroy_sock` fired for the socket, bpftrace's programs on the same
tracepoints included). No leave event will ever come for such a socket, so
without this look it would count in every gauge until the next full pass.

Asked only of sockets that stayed past the grace (the cost follows leaks,
not connections): an exact sock_diag request each (ends and cookie), or one
CLOSE_WAIT dump of this namespace for a batch of thousands. Only this namespace's
sockets can be asked from here (the scanner holds no capability to enter
others); the others are left to reconciliation. A question that fails
keeps the socket: unknown is not gone.
*/
use std::{
    collections::HashSet,
    io,
    net::{IpAddr, SocketAddr},
};

use cwatch_common::{AF_INET, AF_INET6, SockRecord, tcp_state};

use crate::kernel_view::sockdiag::DiagSocket;

/// Past this many sockets to ask about, one dump answers them all (an
/// exact request costs a few µs; a dump, every CLOSE_WAIT socket of the
/// namespace, however many were asked about).
pub const LOOKUPS_MAX: usize = 4096;

/// How the kernel is asked: one socket exactly, or this namespace's
/// CLOSE_WAIT sockets.
pub trait Kernel {
    fn lookup(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        cookie: u64,
    ) -> io::Result<Option<DiagSocket>>;
    fn close_wait(&mut self) -> io::Result<Vec<DiagSocket>>;
}

/// sock_diag in this thread's namespace.
pub struct SockDiag;

impl Kernel for SockDiag {
    fn lookup(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        cookie: u64,
    ) -> io::Result<Option<DiagSocket>> {
        crate::kernel_view::sockdiag::lookup(local, peer, cookie)
    }

    fn close_wait(&mut self) -> io::Result<Vec<DiagSocket>> {
        crate::kernel_view::sockdiag::close_wait()
    }
}

/// What the look found: the cookies gone, and how many questions failed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub gone: Vec<u64>,
    pub failed: usize,
}

/// Of `reported`, the sockets of namespace `own` the kernel no longer has
/// in CLOSE_WAIT.
pub fn vanished(reported: &[SockRecord], own: Option<u32>, kernel: &mut impl Kernel) -> Verdict {
    let mine: Vec<&SockRecord> = reported.iter().filter(|r| Some(r.netns) == own).collect();
    let mut verdict = Verdict::default();
    if mine.len() > LOOKUPS_MAX {
        match kernel.close_wait() {
            Ok(dump) => {
                let there: HashSet<u64> = dump.iter().map(|d| d.cookie).collect();
                verdict.gone = mine
                    .iter()
                    .filter(|r| !there.contains(&r.cookie))
                    .map(|r| r.cookie)
                    .collect();
            }
            Err(_) => verdict.failed = mine.len(),
        }
        return verdict;
    }
    for rec in mine {
        let Some((local, peer)) = ends(rec) else {
            verdict.failed += 1;
            continue;
        };
        match kernel.lookup(local, peer, rec.cookie) {
            Ok(Some(d)) if d.cookie == rec.cookie && d.state == tcp_state::CLOSE_WAIT as u8 => {}
            Ok(_) => verdict.gone.push(rec.cookie),
            Err(_) => verdict.failed += 1,
        }
    }
    verdict
}

/// The socket's ends in its own family, as an exact request must name
/// them: an AF_INET6 socket keeps its IPv4-mapped addresses (a dual-stack
/// listener's connections), which the table shows as IPv4 but the kernel
/// files under AF_INET6. `None` for an unknown family.
fn ends(rec: &SockRecord) -> Option<(SocketAddr, SocketAddr)> {
    let ip = |b: &[u8; 16]| match rec.family {
        AF_INET => Some(IpAddr::from([b[0], b[1], b[2], b[3]])),
        AF_INET6 => Some(IpAddr::from(*b)),
        _ => None,
    };
    Some((
        SocketAddr::new(ip(&rec.local_addr)?, rec.local_port),
        SocketAddr::new(ip(&rec.peer_addr)?, rec.peer_port),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A kernel of made-up sockets: cookie → state; `broken` fails every
    /// question.
    #[derive(Default)]
    struct Fake {
        sockets: HashMap<u64, u32>,
        broken: bool,
        lookups: usize,
        dumps: usize,
        asked: Vec<SocketAddr>,
    }

    fn diag(cookie: u64, state: u32) -> DiagSocket {
        let any: SocketAddr = "127.0.0.1:1".parse().unwrap();
        DiagSocket {
            cookie,
            state: state as u8,
            local: any,
            peer: any,
            inode: 0,
            uid: 0,
            last_ack_recv: None,
            keepalive: None,
        }
    }

    impl Kernel for Fake {
        fn lookup(
            &mut self,
            local: SocketAddr,
            _: SocketAddr,
            cookie: u64,
        ) -> io::Result<Option<DiagSocket>> {
            self.lookups += 1;
            self.asked.push(local);
            if self.broken {
                return Err(io::Error::other("refused"));
            }
            Ok(self.sockets.get(&cookie).map(|s| diag(cookie, *s)))
        }

        fn close_wait(&mut self) -> io::Result<Vec<DiagSocket>> {
            self.dumps += 1;
            if self.broken {
                return Err(io::Error::other("refused"));
            }
            Ok(self
                .sockets
                .iter()
                .filter(|(_, s)| **s == tcp_state::CLOSE_WAIT)
                .map(|(c, s)| diag(*c, *s))
                .collect())
        }
    }

    fn rec(cookie: u64, netns: u32) -> SockRecord {
        SockRecord {
            cookie,
            netns,
            family: 2,
            ..SockRecord::zeroed()
        }
    }

    #[test]
    fn gone_and_left_sockets_of_our_namespace_are_found_others_are_not_asked() {
        let mut k = Fake::default();
        k.sockets.insert(1, tcp_state::CLOSE_WAIT);
        k.sockets.insert(2, tcp_state::LAST_ACK);
        let reported = [rec(1, 7), rec(2, 7), rec(3, 7), rec(4, 8)];
        let v = vanished(&reported, Some(7), &mut k);
        assert_eq!(
            v,
            Verdict {
                gone: vec![2, 3],
                failed: 0
            }
        );
        assert_eq!((k.lookups, k.dumps), (3, 0), "namespace 8 is not ours");
        assert_eq!(vanished(&reported, None, &mut k), Verdict::default());
    }

    #[test]
    fn a_dual_stack_socket_is_asked_for_in_its_own_family() {
        let mut k = Fake::default();
        k.sockets.insert(1, tcp_state::CLOSE_WAIT);
        let mut mapped = rec(1, 7);
        mapped.family = AF_INET6;
        mapped.local_addr = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        mapped.local_port = 80;
        let mut unknown = rec(2, 7);
        unknown.family = 99;
        let v = vanished(&[mapped, unknown], Some(7), &mut k);
        assert_eq!(
            v,
            Verdict {
                gone: vec![],
                failed: 1
            }
        );
        assert_eq!(
            k.asked,
            vec!["[::ffff:127.0.0.1]:80".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn a_large_batch_is_answered_by_one_dump() {
        let mut k = Fake::default();
        let reported: Vec<SockRecord> = (0..=LOOKUPS_MAX as u64).map(|c| rec(c, 7)).collect();
        for c in 1..=LOOKUPS_MAX as u64 {
            k.sockets.insert(c, tcp_state::CLOSE_WAIT);
        }
        let v = vanished(&reported, Some(7), &mut k);
        assert_eq!(v.gone, vec![0]);
        assert_eq!((k.lookups, k.dumps), (0, 1));
    }

    #[test]
    fn a_question_that_fails_keeps_the_socket() {
        let mut k = Fake {
            broken: true,
            ..Fake::default()
        };
        let v = vanished(&[rec(1, 7), rec(2, 7)], Some(7), &mut k);
        assert_eq!(
            v,
            Verdict {
                gone: vec![],
                failed: 2
            }
        );
        let many: Vec<SockRecord> = (0..100).map(|c| rec(c, 7)).collect();
        let v = vanished(&many, Some(7), &mut k);
        assert_eq!(
            v,
            Verdict {
                gone: vec![],
                failed: 100
            }
        );
    }
}
