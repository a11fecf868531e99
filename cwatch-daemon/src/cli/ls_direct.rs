/*!
What `cwatch ls` learns from the kernel itself, without the daemon:

- the SO_KEEPALIVE column: sock_diag reports a socket's timer, and a
  keepalive timer means SO_KEEPALIVE is armed (the incident's other fix);
- the fallback when no daemon answers: the CLOSE_WAIT sockets of this
  network namespace from sock_diag (like `ss`), owners from /proc, ages
  estimated from the last ACK received (the peer's FIN is the last thing a
  CLOSE_WAIT socket hears), every one marked estimated.

It shows what the kernel shows the user running it, no more: sock_diag
lists every socket of the namespace to anyone, but the fds of another
user's process (or of one with more capabilities) are readable only with
`CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`. Without them, the sockets of
such processes have no owner, and [`visibility_note`] says how many.
*/
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use netlink_packet_sock_diag::inet::StateFlags;

use crate::{
    http::wire::{ApiSocket, Holder},
    kernel_view::sockdiag::{self, DiagSocket},
    owners::ProcRoot,
    table::is_leaked,
};

/// Keepalive timer per cookie for the CLOSE_WAIT sockets of this network
/// namespace: `Some(time left)` when armed, `None` when not. Sockets not in
/// the map are not visible here (another namespace, or gone).
pub fn keepalive_by_cookie() -> HashMap<u64, Option<Duration>> {
    sockdiag::close_wait()
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.cookie, s.keepalive))
        .collect()
}

/// The CLOSE_WAIT sockets of this namespace, as API objects with estimated
/// ages, owners from /proc where readable.
pub fn sockets(proc: &ProcRoot, leak_after: Duration) -> std::io::Result<Vec<ApiSocket>> {
    let socks = sockdiag::close_wait()?;
    let listening: HashSet<SocketAddr> = sockdiag::dump(StateFlags::LISTEN)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.local)
        .collect();
    let wanted: HashSet<u64> = socks.iter().map(|s| s.inode).filter(|i| *i != 0).collect();
    let holders = holders_of(proc, &wanted);
    let netns = std::fs::metadata(proc.path("self/ns/net"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
        .unwrap_or(0);
    let mut out: Vec<ApiSocket> = socks
        .iter()
        .map(|s| to_api(s, &listening, &holders, netns, leak_after))
        .collect();
    out.sort_by(|a, b| {
        b.age_seconds
            .total_cmp(&a.age_seconds)
            .then(a.cookie.cmp(&b.cookie))
    });
    Ok(out)
}

/// socket inode → holders, for the inodes in `wanted`.
fn holders_of(proc: &ProcRoot, wanted: &HashSet<u64>) -> HashMap<u64, Vec<Holder>> {
    let mut out: HashMap<u64, Vec<Holder>> = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    for pid in proc.pids() {
        let Ok(fds) = proc.socket_fds(pid) else {
            continue;
        };
        for (fd, inode) in fds {
            if wanted.contains(&inode) {
                let comm = proc.comm(pid).map(|c| c.as_str().into_owned());
                out.entry(inode).or_default().push(Holder {
                    pid,
                    comm: comm.unwrap_or_default(),
                    fd: Some(fd),
                });
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|h| (h.pid, h.fd));
    }
    out
}

/// The capabilities that let this process read every process's fds.
const SEE_ALL: [u32; 2] = [
    super::doctor::CAP_SYS_PTRACE,
    super::doctor::CAP_DAC_READ_SEARCH,
];

/// What the user's view lacks, appended to the fallback's notice: empty
/// when it may read every process's fds.
pub fn visibility_note(sockets: &[ApiSocket]) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = super::doctor::cap_eff(&status).unwrap_or(0);
    note_for(caps, sockets)
}

fn note_for(caps: u64, sockets: &[ApiSocket]) -> String {
    if SEE_ALL.iter().all(|c| caps & (1 << c) != 0) {
        return String::new();
    }
    let unowned = sockets.iter().filter(|s| s.pid.is_none()).count();
    format!(
        "; without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH only the owners this user may \
         inspect are shown ({unowned} of {} sockets have no owner shown)",
        sockets.len()
    )
}

fn is_inbound(local: SocketAddr, listening: &HashSet<SocketAddr>) -> bool {
    listening
        .iter()
        .any(|l| l.port() == local.port() && (l.ip() == local.ip() || l.ip().is_unspecified()))
}

fn to_api(
    s: &DiagSocket,
    listening: &HashSet<SocketAddr>,
    holders: &HashMap<u64, Vec<Holder>>,
    netns: u32,
    leak_after: Duration,
) -> ApiSocket {
    let holders = holders.get(&s.inode).cloned().unwrap_or_default();
    let owner = holders.first().cloned();
    let direction = if s.inode == 0 {
        "unaccepted"
    } else if is_inbound(s.local, listening) {
        "inbound"
    } else {
        "outbound"
    };
    let age = s.last_ack_recv.unwrap_or_default();
    ApiSocket {
        cookie: s.cookie,
        state: "CLOSE_WAIT".into(),
        direction: direction.into(),
        local_addr: s.local.ip().to_string(),
        local_port: s.local.port(),
        peer_addr: s.peer.ip().to_string(),
        peer_port: s.peer.port(),
        pid: owner.as_ref().map(|h| h.pid),
        comm: owner.as_ref().map(|h| h.comm.clone()),
        fd: owner.as_ref().and_then(|h| h.fd),
        holders,
        netns,
        age_seconds: age.as_secs_f64(),
        age_estimated: true,
        leaked: is_leaked(age, leak_after),
        site: None,
        stack: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_says_what_an_unprivileged_view_lacks() {
        let s = DiagSocket {
            cookie: 9,
            state: 8,
            local: "127.0.0.1:41000".parse().unwrap(),
            peer: "127.0.0.1:7000".parse().unwrap(),
            inode: 77,
            uid: 0,
            last_ack_recv: None,
            keepalive: None,
        };
        let none = HashMap::new();
        let api = |h: &HashMap<u64, Vec<Holder>>| {
            to_api(&s, &HashSet::new(), h, 1, Duration::from_secs(300))
        };
        let owned = HashMap::from([(
            77,
            vec![Holder {
                pid: 5,
                comm: "mine".into(),
                fd: Some(4),
            }],
        )]);
        let socks = [api(&none), api(&owned), api(&none)];
        let all = (1 << SEE_ALL[0]) | (1 << SEE_ALL[1]);
        assert_eq!(note_for(all, &socks), "");
        let note = note_for(1 << SEE_ALL[0], &socks);
        assert!(
            note.contains("2 of 3 sockets have no owner shown"),
            "{note}"
        );
        assert!(note_for(0, &[]).contains("0 of 0"));
    }

    #[test]
    fn diag_sockets_become_estimated_api_objects() {
        let s = DiagSocket {
            cookie: 9,
            state: 8,
            local: "127.0.0.1:7000".parse().unwrap(),
            peer: "127.0.0.1:41000".parse().unwrap(),
            inode: 77,
            uid: 0,
            last_ack_recv: Some(Duration::from_secs(400)),
            keepalive: None,
        };
        let listening = HashSet::from(["0.0.0.0:7000".parse().unwrap()]);
        let holders = HashMap::from([(
            77,
            vec![Holder {
                pid: 5,
                comm: "srv".into(),
                fd: Some(4),
            }],
        )]);
        let api = to_api(&s, &listening, &holders, 1, Duration::from_secs(300));
        assert_eq!(api.direction, "inbound");
        assert_eq!((api.pid, api.fd), (Some(5), Some(4)));
        assert!(api.age_estimated && api.leaked);
        let lonely = DiagSocket { inode: 0, ..s };
        let api = to_api(
            &lonely,
            &HashSet::new(),
            &holders,
            1,
            Duration::from_secs(900),
        );
        assert_eq!(
            (api.direction.as_str(), api.pid, api.leaked),
            ("unaccepted", None, false)
        );
    }
}
