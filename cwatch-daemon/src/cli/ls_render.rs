//! How `cwatch ls` prints: the summary (totals, then the counts per peer and
//! per process, biggest first), then one row per socket like `ss`, oldest
//! first. Pure text from the API's objects, so it is tested without a
//! daemon; [`summarize`] builds the summary from rows when no daemon counts
//! for us (the kernel fallback).
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use crate::{
    http::wire::{ApiSocket, ApiSummary, PeerCount, ProcessCount},
    text::for_terminal,
};

/// The column headings.
pub fn header() -> String {
    format!(
        "{:<10} {:<24} {:<6} {:<30} {:<30} {:<10} {:<9} {}\n",
        "AGE", "PID/COMM", "FD", "LOCAL", "PEER", "DIR", "KEEPALIVE", "LEAKED"
    )
}

/// One socket's row. `keepalive`: the kernel's keepalive timer per cookie
/// (absent: not visible from here).
pub fn row(sock: &ApiSocket, keepalive: &HashMap<u64, Option<Duration>>) -> String {
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
    format!(
        "{:<10} {:<24} {:<6} {:<30} {:<30} {:<10} {:<9} {}\n",
        age(sock),
        owner(sock),
        fd(sock),
        endpoint(&sock.local_addr, &sock.local_port.to_string()),
        endpoint(&sock.peer_addr, &sock.peer_port.to_string()),
        for_terminal(&sock.direction),
        ka,
        leaked,
    )
}

/// The summary as `ls` prints it.
pub fn summary_text(s: &ApiSummary) -> String {
    let mut out = String::from("CLOSE_WAIT by peer:\n");
    let mut peers: Vec<(String, &PeerCount)> = s
        .by_peer
        .iter()
        .map(|p| {
            let port = p.peer_port.map_or("*".to_string(), |p| p.to_string());
            (endpoint(&p.peer_addr, &port), p)
        })
        .collect();
    peers.sort_by(|a, b| b.1.sockets.cmp(&a.1.sockets).then_with(|| a.0.cmp(&b.0)));
    for (key, p) in peers {
        out += &format!("{:>8} {key:<40} ({} leaked)\n", p.sockets, p.leaked);
    }
    out += "\nCLOSE_WAIT by process:\n";
    let mut procs: Vec<(String, &ProcessCount)> = s
        .by_process
        .iter()
        .map(|p| (owner_of(p.pid, p.comm.as_deref()), p))
        .collect();
    procs.sort_by(|a, b| b.1.sockets.cmp(&a.1.sockets).then_with(|| a.0.cmp(&b.0)));
    for (key, p) in procs {
        out += &format!("{:>8} {key:<40} ({} leaked)\n", p.sockets, p.leaked);
    }
    out += &format!("\n{} sockets in CLOSE_WAIT", s.sockets);
    if s.dead > 0 {
        out += &format!(", {} closed by the kernel but still held (dead)", s.dead);
    }
    out.push('\n');
    out
}

/// The summary of `sockets` (dead ones count with their peer and process,
/// as leaked), as the daemon would count them.
pub fn summarize(sockets: &[ApiSocket]) -> ApiSummary {
    let mut by_peer: BTreeMap<(String, Option<u16>), (u64, u64)> = BTreeMap::new();
    let mut by_process: BTreeMap<(Option<u32>, Option<String>), (u64, u64)> = BTreeMap::new();
    let mut s = ApiSummary::default();
    for sock in sockets {
        let dead = sock.state != "CLOSE_WAIT";
        if dead {
            s.dead += 1;
        } else {
            s.sockets += 1;
            s.leaked += u64::from(sock.leaked);
        }
        let port = (sock.direction == "outbound").then_some(sock.peer_port);
        let leaked = u64::from(sock.leaked || dead);
        for slot in [
            by_peer.entry((sock.peer_addr.clone(), port)).or_default(),
            by_process.entry((sock.pid, sock.comm.clone())).or_default(),
        ] {
            slot.0 += 1;
            slot.1 += leaked;
        }
    }
    s.by_peer = by_peer
        .into_iter()
        .map(|((peer_addr, peer_port), (sockets, leaked))| PeerCount {
            peer_addr,
            peer_port,
            sockets,
            leaked,
        })
        .collect();
    s.by_process = by_process
        .into_iter()
        .map(|((pid, comm), (sockets, leaked))| ProcessCount {
            pid,
            comm,
            sockets,
            leaked,
        })
        .collect();
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

fn owner(sock: &ApiSocket) -> String {
    owner_of(sock.pid, sock.comm.as_deref())
}

/// `pid/comm`, the name escaped: a process named with a newline or an
/// escape sequence can neither split a row nor drive the terminal.
fn owner_of(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
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

    /// Rows, then the summary counted from them.
    fn render(sockets: &[ApiSocket], keepalive: &HashMap<u64, Option<Duration>>) -> String {
        let mut s = header();
        for sock in sockets {
            s += &row(sock, keepalive);
        }
        s + "\n" + &summary_text(&summarize(sockets))
    }

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
    fn fd_comes_from_the_owner_holder() {
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
