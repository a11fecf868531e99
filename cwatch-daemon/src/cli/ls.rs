/*!
`cwatch ls`: asks the running daemon for its sockets and prints them like
`ss`, oldest first, followed by the counts per peer and per process (the
incident's `ss … | uniq -c`, done right). When no daemon answers it reads the
kernel's socket table itself ([`super::ls_direct`]), says so, and marks every
age as estimated. The KEEPALIVE column comes from the kernel either way.
*/
use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context as _;

use super::{LsArgs, ls_direct};
use crate::{
    http::wire::{ApiSocket, PeerFilter, Selection},
    text::for_terminal,
};

/// Sockets asked for per request; `ls` follows the cursor for the rest.
const PAGE: usize = 10_000;

/// Why the daemon's list could not be had.
enum FetchError {
    /// Nothing listens there: fall back to the kernel.
    NoDaemon(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for FetchError {
    fn from(e: anyhow::Error) -> Self {
        FetchError::Other(e)
    }
}

pub fn run(args: &LsArgs, target: SocketAddr, leak_after: Duration) -> anyhow::Result<()> {
    let sockets = match fetch(args, target) {
        Ok(s) => s,
        Err(FetchError::Other(e)) => return Err(e),
        Err(FetchError::NoDaemon(why)) => {
            eprintln!(
                "cwatch: no daemon answers at {target} ({why}); reading the kernel's socket \
                 table directly: this network namespace only, ages estimated from the last \
                 ACK (marked ~), leak-after {}",
                humantime::format_duration(leak_after)
            );
            let all = ls_direct::sockets(&crate::owners::ProcRoot::real(), leak_after)
                .context("reading the kernel's socket table (sock_diag)")?;
            let selection = selection(args);
            all.into_iter()
                .filter(|s| selection.matches(s, s.leaked))
                .collect()
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &sockets)?;
        writeln!(out)?;
    } else {
        let keepalive = ls_direct::keepalive_by_cookie();
        out.write_all(render(&sockets, &keepalive).as_bytes())?;
    }
    Ok(())
}

/// `--leaked`, `--pid`, `--peer`: what the daemon selects, and what this
/// side selects when it reads the kernel itself.
fn selection(args: &LsArgs) -> Selection {
    Selection {
        leaked: args.leaked.then_some(true),
        pid: args.pid,
        peer: args.peer.as_deref().and_then(|p| PeerFilter::parse(p).ok()),
    }
}

/// The query's parameters for `args` (filters done by the daemon); the HTTP
/// client encodes them.
pub fn query(args: &LsArgs, cursor: Option<&str>) -> Vec<(&'static str, String)> {
    let mut q = vec![("limit", PAGE.to_string())];
    if args.leaked {
        q.push(("leaked", "true".into()));
    }
    if let Some(pid) = args.pid {
        q.push(("pid", pid.to_string()));
    }
    if let Some(peer) = &args.peer {
        q.push(("peer", peer.clone()));
    }
    if let Some(c) = cursor {
        q.push(("cursor", c.to_string()));
    }
    q
}

/// Every matching socket, page by page, oldest first.
fn fetch(args: &LsArgs, target: SocketAddr) -> Result<Vec<ApiSocket>, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = format!("http://{target}/api/v1/sockets");
        let request = agent.get(&url).query_pairs(query(args, cursor.as_deref()));
        let mut response = request.call().map_err(|err| match err {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                FetchError::NoDaemon(err.to_string())
            }
            other => FetchError::Other(anyhow::anyhow!("asking the daemon at {url}: {other}")),
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            return Err(FetchError::Other(anyhow::anyhow!(
                "the daemon at {target} answered {status}: {}",
                body.trim()
            )));
        }
        let next = response
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let page: Vec<ApiSocket> = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_json()
            .with_context(|| {
                format!("the daemon at {url} sent something that is not the socket list")
            })?;
        all.extend(page);
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
}

/// The table and the summaries, as text. `keepalive`: the kernel's
/// keepalive timer per cookie (absent: not visible from here).
pub fn render(sockets: &[ApiSocket], keepalive: &HashMap<u64, Option<Duration>>) -> String {
    let mut s = format!(
        "{:<10} {:<24} {:<6} {:<30} {:<30} {:<10} {:<9} {}\n",
        "AGE", "PID/COMM", "FD", "LOCAL", "PEER", "DIR", "KEEPALIVE", "LEAKED"
    );
    for sock in sockets {
        let leaked = match (sock.state.as_str(), sock.leaked) {
            ("CLOSE_WAIT", true) => "yes",
            ("CLOSE_WAIT", false) => "no",
            _ => "dead",
        };
        let ka = match keepalive.get(&sock.cookie) {
            Some(Some(_)) => "on",
            Some(None) => "off",
            None => "?",
        };
        s += &format!(
            "{:<10} {:<24} {:<6} {:<30} {:<30} {:<10} {:<9} {}\n",
            age(sock),
            owner(sock),
            fd(sock),
            endpoint(&sock.local_addr, &sock.local_port.to_string()),
            endpoint(&sock.peer_addr, &sock.peer_port.to_string()),
            for_terminal(&sock.direction),
            ka,
            leaked,
        );
    }
    let mut by_peer: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut by_owner: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for sock in sockets {
        let port = if sock.direction == "outbound" {
            sock.peer_port.to_string()
        } else {
            "*".to_string()
        };
        for (map, key) in [
            (&mut by_peer, endpoint(&sock.peer_addr, &port)),
            (&mut by_owner, owner(sock)),
        ] {
            let slot = map.entry(key).or_default();
            slot.0 += 1;
            slot.1 += u64::from(sock.leaked);
        }
    }
    for (title, map) in [("peer", by_peer), ("process", by_owner)] {
        s += &format!("\nCLOSE_WAIT by {title}:\n");
        let mut rows: Vec<_> = map.into_iter().collect();
        rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
        for (key, (total, leaked)) in rows {
            s += &format!("{total:>8} {key:<40} ({leaked} leaked)\n");
        }
    }
    let dead = sockets.iter().filter(|x| x.state != "CLOSE_WAIT").count();
    s += &format!("\n{} sockets in CLOSE_WAIT", sockets.len() - dead);
    if dead > 0 {
        s += &format!(", {dead} closed by the kernel but still held (dead)");
    }
    s.push('\n');
    s
}

fn age(sock: &ApiSocket) -> String {
    let whole = Duration::from_secs(sock.age_seconds.max(0.0) as u64);
    let text = humantime::format_duration(whole)
        .to_string()
        .replace(' ', "");
    if sock.age_estimated {
        format!("~{text}")
    } else {
        text
    }
}

/// `pid/comm`, the name escaped: a process named with a newline or an
/// escape sequence can neither split a row nor drive the terminal.
fn owner(sock: &ApiSocket) -> String {
    match (sock.pid, &sock.comm) {
        (Some(pid), Some(comm)) => format!("{pid}/{}", for_terminal(comm)),
        (Some(pid), None) => pid.to_string(),
        _ => "[unknown]".to_string(),
    }
}

/// The owner's fd: the socket's own `fd`, else the owner's entry among the
/// holders; "+N" when N more processes hold it too.
fn fd(sock: &ApiSocket) -> String {
    let own = sock.fd.or_else(|| {
        sock.holders
            .iter()
            .find(|h| Some(h.pid) == sock.pid)
            .and_then(|h| h.fd)
    });
    let mut text = own.map_or("-".to_string(), |fd| fd.to_string());
    let others = sock
        .holders
        .iter()
        .filter(|h| Some(h.pid) != sock.pid)
        .count();
    if others > 0 {
        text += &format!("+{others}");
    }
    text
}

fn endpoint(addr: &str, port: &str) -> String {
    let addr = for_terminal(addr);
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(
        cookie: u64,
        pid: Option<u32>,
        peer: &str,
        port: u16,
        age: f64,
        leaked: bool,
    ) -> ApiSocket {
        ApiSocket {
            cookie,
            state: "CLOSE_WAIT".into(),
            direction: if pid.is_some() { "outbound" } else { "inbound" }.into(),
            local_addr: "127.0.0.1".into(),
            local_port: 40000 + cookie as u16,
            peer_addr: peer.into(),
            peer_port: port,
            pid,
            comm: pid.map(|_| "leaky".to_string()),
            fd: None,
            holders: vec![],
            netns: 1,
            age_seconds: age,
            age_estimated: false,
            leaked,
        }
    }

    #[test]
    fn fd_comes_from_the_owner_holder_and_query_is_encoded() {
        let mut s = sock(1, Some(42), "127.0.1.1", 7000, 1.0, false);
        assert_eq!(fd(&s), "-");
        s.holders = vec![
            crate::http::wire::Holder {
                pid: 42,
                comm: "leaky".into(),
                fd: Some(7),
            },
            crate::http::wire::Holder {
                pid: 43,
                comm: "child".into(),
                fd: Some(9),
            },
        ];
        assert_eq!(fd(&s), "7+1");
        let args = LsArgs {
            leaked: true,
            pid: Some(42),
            peer: Some("[::1]:7000".into()),
            ..Default::default()
        };
        assert_eq!(
            query(&args, Some("a-b")),
            vec![
                ("limit", "10000".to_string()),
                ("leaked", "true".into()),
                ("pid", "42".into()),
                ("peer", "[::1]:7000".into()),
                ("cursor", "a-b".into()),
            ]
        );
    }

    #[test]
    fn hostile_names_stay_on_their_row() {
        let mut evil = sock(1, Some(42), "127.0.1.1", 7000, 1.0, false);
        evil.comm = Some("a\nb\u{1b}[31m\\xff".into());
        let text = render(&[evil], &HashMap::new());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("42/a\\nb\\x1b[31m\\xff"), "{}", lines[1]);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert_eq!(
            text.lines().filter(|l| l.contains("42/a")).count(),
            2,
            "one row, one summary line"
        );
    }

    #[test]
    fn table_and_summaries() {
        let mut dead = sock(4, Some(42), "127.0.1.1", 7000, 20.0, true);
        dead.state = "CLOSE".into();
        let keepalive = HashMap::from([(1, Some(Duration::from_secs(7000))), (2, None)]);
        let text = render(
            &[
                sock(1, Some(42), "127.0.1.1", 7000, 3725.4, true),
                sock(2, Some(42), "127.0.1.1", 7000, 10.0, false),
                sock(3, None, "::1", 5555, 1.0, false),
                dead,
            ],
            &keepalive,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("AGE"));
        assert!(
            lines[1].starts_with("1h 2m 5s".replace(' ', "").as_str()),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("42/leaky") && lines[1].ends_with("yes"),
            "{}",
            lines[1]
        );
        assert!(
            lines[3].contains("[::1]:5555") && lines[3].contains("[unknown]"),
            "{}",
            lines[3]
        );
        // The dead socket counts with its peer and process, as leaked.
        assert!(text.contains("       3 127.0.1.1:7000"), "{text}");
        assert!(text.contains("(2 leaked)"), "{text}");
        assert!(
            text.contains("       1 [::1]:*"),
            "inbound peers group by address: {text}"
        );
        assert!(text.contains("       3 42/leaky"), "{text}");
        assert!(lines[1].contains(" on "), "{}", lines[1]);
        assert!(lines[2].contains(" off "), "{}", lines[2]);
        assert!(lines[3].contains(" ? "), "{}", lines[3]);
        assert!(lines[4].ends_with("dead"), "{}", lines[4]);
        assert!(
            text.ends_with(
                "3 sockets in CLOSE_WAIT, 1 closed by the kernel but still held (dead)\n"
            ),
            "{text}"
        );
    }
}
