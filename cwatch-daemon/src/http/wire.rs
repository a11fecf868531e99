/*!
The wire types of `GET /api/v1/sockets`, `GET /api/v1/summary` and
`POST /api/v1/reaped`, all that the clients (`cwatch ls`, `cwatch reap`)
import from the daemon: one [`ApiSocket`] per
socket with exactly the keys the contract lists, the counts per peer and per
process ([`ApiSummary`]), and the filters both sides apply ([`Selection`]:
leaked, pid, peer), so `cwatch ls` reading the kernel itself selects exactly
what the daemon would. They live apart from the table's types so that the wire format
changes only on purpose.
*/
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One holder of a socket: a process and the fd it holds it under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub fd: Option<i32>,
}

/// One socket, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiSocket {
    pub cookie: u64,
    pub state: String,
    pub direction: String,
    pub local_addr: String,
    pub local_port: u16,
    pub peer_addr: String,
    pub peer_port: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub fd: Option<i32>,
    pub holders: Vec<Holder>,
    pub netns: u32,
    pub age_seconds: f64,
    pub age_estimated: bool,
    pub leaked: bool,
    /// Where the socket was opened: the first frames of its connect-time
    /// stack outside libc and the language runtimes; `null` when no stack
    /// was captured (the process was not watched when it connected) or none
    /// is resolved yet.
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub stack: Option<ApiStack>,
}

/// A socket's connect-time stack, innermost frame first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiStack {
    pub frames: Vec<ApiFrame>,
    /// A frame may be missing (the frames shown are still right).
    pub partial: bool,
}

/// One frame; unknown members are `null`. A frame without a symbol names
/// its code by `module` (with `build_id`) and file `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFrame {
    pub symbol: Option<String>,
    pub module: Option<String>,
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
    #[serde(default)]
    pub build_id: Option<String>,
    #[serde(default)]
    pub inlined: bool,
}

/// `GET /api/v1/summary`: the counts `cwatch ls` prints first, from the
/// daemon's groups (or, under a selection, from the sockets it selects).
/// Dead sockets still held count with their peer and process, as leaked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiSummary {
    /// Sockets in CLOSE_WAIT.
    pub sockets: u64,
    /// Of those, leaked.
    pub leaked: u64,
    /// Dead sockets still held (closed by the kernel, fd not closed).
    pub dead: u64,
    pub by_peer: Vec<PeerCount>,
    pub by_process: Vec<ProcessCount>,
    /// Leaked sockets by site (`[unknown]`: no stack captured).
    #[serde(default)]
    pub by_site: Vec<SiteCount>,
}

/// One site's line of the summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCount {
    pub site: String,
    pub sockets: u64,
    pub leaked: u64,
}

/// One peer's line of the summary; `peer_port` is `None` for inbound
/// sockets (`*`: the remote port is ephemeral).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCount {
    pub peer_addr: String,
    pub peer_port: Option<u16>,
    pub sockets: u64,
    pub leaked: u64,
}

/// One process's line of the summary; `pid` and `comm` are `None` for the
/// sockets no holder is known for yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCount {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub sockets: u64,
    pub leaked: u64,
}

/// `POST /api/v1/reaped`: the cookies of the sockets `cwatch reap --yes`
/// destroyed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapedReport {
    pub cookies: Vec<u64>,
}

/// The daemon's answer: the cookies it counted in
/// `cwatch_reaped_sockets_total`, and those it did not, each with why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapedAnswer {
    pub counted: Vec<u64>,
    pub refused: Vec<RefusedReap>,
}

/// A reported cookie the daemon did not count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedReap {
    pub cookie: u64,
    pub why: String,
}

/// `peer=ADDR` or `peer=ADDR:PORT` (`[V6]:PORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerFilter {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl PeerFilter {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Self {
                addr: canonical(addr),
                port: None,
            });
        }
        match text.parse::<std::net::SocketAddr>() {
            Ok(sa) => Ok(Self {
                addr: canonical(sa.ip()),
                port: Some(sa.port()),
            }),
            Err(_) => Err(format!(
                "{text:?} is not ADDR or ADDR:PORT (e.g. 10.1.2.3, 10.1.2.3:7000, [::1]:7000)"
            )),
        }
    }

    /// Whether a socket to `addr`:`port` matches.
    pub fn matches(&self, addr: IpAddr, port: u16) -> bool {
        self.addr == canonical(addr) && self.port.is_none_or(|p| p == port)
    }
}

/// IPv4-mapped IPv6 shown as IPv4, as the table stores addresses.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a [`Selection`] looks at in a socket, on either side of the wire.
pub trait Selectable {
    /// The remote end.
    fn peer(&self) -> Option<(IpAddr, u16)>;
    /// Whether `pid` owns or holds the socket.
    fn held_by(&self, pid: u32) -> bool;
}

impl Selectable for ApiSocket {
    fn peer(&self) -> Option<(IpAddr, u16)> {
        Some((self.peer_addr.parse().ok()?, self.peer_port))
    }

    fn held_by(&self, pid: u32) -> bool {
        self.pid == Some(pid) || self.holders.iter().any(|h| h.pid == pid)
    }
}

/// The filters of the sockets endpoint (and of `cwatch ls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub leaked: Option<bool>,
    pub pid: Option<u32>,
    pub peer: Option<PeerFilter>,
}

impl Selection {
    /// Whether `socket` passes (`leaked`: whether it is leaked now). `pid`
    /// matches any process holding the socket.
    pub fn matches(&self, socket: &impl Selectable, leaked: bool) -> bool {
        self.leaked.is_none_or(|want| want == leaked)
            && self.pid.is_none_or(|pid| socket.held_by(pid))
            && self.peer.is_none_or(|p| {
                socket
                    .peer()
                    .is_some_and(|(addr, port)| p.matches(addr, port))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(peer: &str, port: u16, pid: Option<u32>, holders: &[u32]) -> ApiSocket {
        ApiSocket {
            cookie: 1,
            state: "CLOSE_WAIT".into(),
            direction: "outbound".into(),
            local_addr: "127.0.0.1".into(),
            local_port: 40000,
            peer_addr: peer.into(),
            peer_port: port,
            pid,
            comm: None,
            fd: None,
            holders: holders
                .iter()
                .map(|&pid| Holder {
                    pid,
                    comm: "x".into(),
                    fd: Some(3),
                })
                .collect(),
            netns: 1,
            age_seconds: 1.0,
            age_estimated: false,
            leaked: false,
            site: None,
            stack: None,
        }
    }

    #[test]
    fn the_client_selects_as_the_daemon_does() {
        let peer = |t: &str| Some(PeerFilter::parse(t).unwrap());
        let s = api("127.0.1.1", 7000, Some(42), &[42, 43]);
        let sel = |pid, p| Selection {
            leaked: None,
            pid,
            peer: p,
        };
        assert!(sel(Some(43), peer("127.0.1.1")).matches(&s, false));
        assert!(sel(None, peer("[::ffff:127.0.1.1]:7000")).matches(&s, false));
        assert!(!sel(None, peer("127.0.1.1:7001")).matches(&s, false));
        assert!(!sel(Some(44), None).matches(&s, false));
        let leaked = Selection {
            leaked: Some(true),
            ..Selection::default()
        };
        assert!(!leaked.matches(&s, false) && leaked.matches(&s, true));
        assert!(
            PeerFilter::parse("somehost")
                .unwrap_err()
                .contains("not ADDR")
        );
    }
}
