/*!
`cwatch ls`: asks the running daemon for its sockets and prints them like
`ss`, oldest first, followed by the counts per peer and per process (the
incident's `ss … | uniq -c`, done right).
*/
use std::{collections::BTreeMap, io::Write, net::SocketAddr, time::Duration};

use anyhow::Context as _;

use crate::{config::LsArgs, http::api::ApiSocket};

pub fn run(args: &LsArgs, target: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{target}/api/v1/sockets");
    let mut response = ureq::get(&url).call().map_err(|err| match err {
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            anyhow::anyhow!(
                "no cwatch daemon answers at {target} ({err}); start one with `cwatch run`, \
                 or pass --listen ADDR:PORT"
            )
        }
        other => anyhow::anyhow!("asking the daemon at {url}: {other}"),
    })?;
    // No size limit: ureq's default (10 MiB) is ~40k sockets of JSON.
    let mut sockets: Vec<ApiSocket> = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_json()
        .with_context(|| {
            format!("the daemon at {url} sent something that is not the socket list")
        })?;
    if args.leaked {
        sockets.retain(|s| s.leaked);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &sockets)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&sockets).as_bytes())?;
    }
    Ok(())
}

/// The table and the summaries, as text.
pub fn render(sockets: &[ApiSocket]) -> String {
    let mut s = format!(
        "{:<10} {:<24} {:<5} {:<30} {:<30} {:<10} {}\n",
        "AGE", "PID/COMM", "FD", "LOCAL", "PEER", "DIR", "LEAKED"
    );
    for sock in sockets {
        s += &format!(
            "{:<10} {:<24} {:<5} {:<30} {:<30} {:<10} {}\n",
            age(sock),
            owner(sock),
            sock.fd.map_or("-".to_string(), |fd| fd.to_string()),
            endpoint(&sock.local_addr, &sock.local_port.to_string()),
            endpoint(&sock.peer_addr, &sock.peer_port.to_string()),
            sock.direction,
            if sock.leaked { "yes" } else { "no" },
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
    s += &format!("\n{} sockets in CLOSE_WAIT\n", sockets.len());
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
    match (sock.pid, &sock.comm) {
        (Some(pid), Some(comm)) => format!("{pid}/{comm}"),
        (Some(pid), None) => pid.to_string(),
        _ => "[unknown]".to_string(),
    }
}

fn endpoint(addr: &str, port: &str) -> String {
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
    fn table_and_summaries() {
        let text = render(&[
            sock(1, Some(42), "127.0.1.1", 7000, 3725.4, true),
            sock(2, Some(42), "127.0.1.1", 7000, 10.0, false),
            sock(3, None, "::1", 5555, 1.0, false),
        ]);
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
        assert!(text.contains("       2 127.0.1.1:7000"), "{text}");
        assert!(text.contains("(1 leaked)"), "{text}");
        assert!(
            text.contains("       1 [::1]:*"),
            "inbound peers group by address: {text}"
        );
        assert!(text.contains("       2 42/leaky"), "{text}");
        assert!(text.ends_with("3 sockets in CLOSE_WAIT\n"), "{text}");
    }
}
