//! Ground truth from iproute2's `ss`: the sockets the kernel has in
//! CLOSE_WAIT, with their cookie (`sk:<hex>`), inode and holders.
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
};

use anyhow::{Context as _, bail};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsUser {
    pub comm: String,
    pub pid: u32,
    pub fd: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsSocket {
    /// As the kernel has it (an IPv4-mapped address stays IPv6 here).
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub cookie: u64,
    pub inode: u64,
    pub users: Vec<SsUser>,
}

/// Every TCP socket in CLOSE_WAIT in the current network namespace.
pub fn close_wait() -> anyhow::Result<Vec<SsSocket>> {
    let out = Command::new("ss")
        .args(["-tnepH", "state", "close-wait"])
        .output()
        .context("running ss (iproute2)")?;
    if !out.status.success() {
        bail!("ss failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// IPv4-mapped IPv6 shown as IPv4, as cwatch shows it.
pub fn shown(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses `ss -tnepH state <one state>` (no state column, no header). ss
/// prints process names as they are, so a name with a newline continues a
/// record on the next line: a line that does not start with the two queue
/// numbers belongs to the record before it.
pub fn parse(text: &str) -> anyhow::Result<Vec<SsSocket>> {
    let mut records: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let starts = fields.next().is_some_and(|f| f.parse::<u64>().is_ok())
            && fields.next().is_some_and(|f| f.parse::<u64>().is_ok())
            && !line.starts_with(char::is_whitespace);
        match records.last_mut() {
            Some(last) if !starts => {
                last.push('\n');
                last.push_str(line);
            }
            _ => records.push(line.to_string()),
        }
    }
    records
        .iter()
        .map(|line| parse_line(line).with_context(|| format!("ss line {line:?}")))
        .collect()
}

fn parse_line(line: &str) -> anyhow::Result<SsSocket> {
    let mut fields = line.split_whitespace();
    let _recv_q = fields.next().context("no Recv-Q")?;
    let _send_q = fields.next().context("no Send-Q")?;
    let local = endpoint(fields.next().context("no local address")?)?;
    let peer = endpoint(fields.next().context("no peer address")?)?;
    let users = match line.find("users:(") {
        Some(at) => users(&line[at + "users:(".len()..])?,
        None => Vec::new(),
    };
    let cookie = field(line, "sk:").context("no sk: (cookie)")?;
    let cookie = u64::from_str_radix(cookie, 16).context("cookie is not hex")?;
    let inode = field(line, "ino:").context("no ino:")?.parse()?;
    Ok(SsSocket {
        local,
        peer,
        cookie,
        inode,
        users,
    })
}

/// The value after ` key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}"))? + 1 + key.len();
    line[at..].split_whitespace().next()
}

fn endpoint(text: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = text.rsplit_once(':').context("no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // ss may append %iface to a scoped address.
    let host = host.split('%').next().unwrap_or(host);
    Ok(SocketAddr::new(host.parse()?, port.parse()?))
}

/// `("comm",pid=1,fd=3),("comm",pid=2,fd=4))` → holders.
fn users(mut text: &str) -> anyhow::Result<Vec<SsUser>> {
    let mut out = Vec::new();
    while let Some(rest) = text.strip_prefix("(\"") {
        let end = rest.find("\",pid=").context("holder without pid")?;
        let comm = rest[..end].to_string();
        let rest = &rest[end + "\",pid=".len()..];
        let (pid, rest) = rest.split_once(",fd=").context("holder without fd")?;
        let close = rest.find(')').context("unterminated holder")?;
        out.push(SsUser {
            comm,
            pid: pid.parse()?,
            fd: rest[..close].parse()?,
        });
        text = rest[close + 1..].trim_start_matches(',');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_v6_holders_and_cookie() {
        let text = "1      0          127.0.0.1:41706    127.0.1.1:7777 users:((\"py, thon\",pid=10076,fd=3),(\"x\",pid=2,fd=9)) ino:12181 sk:5a cgroup:/ -->\n\
                    1 0 [::ffff:127.0.0.1]:5 [::1]:7000 ino:7 sk:1 -->\n";
        let got = parse(text).unwrap();
        assert_eq!(got[0].local, "127.0.0.1:41706".parse().unwrap());
        assert_eq!(got[0].cookie, 0x5a);
        assert_eq!(got[0].inode, 12181);
        assert_eq!(
            got[0].users,
            vec![
                SsUser {
                    comm: "py, thon".into(),
                    pid: 10076,
                    fd: 3
                },
                SsUser {
                    comm: "x".into(),
                    pid: 2,
                    fd: 9
                }
            ]
        );
        assert_eq!(got[1].peer, "[::1]:7000".parse().unwrap());
        assert_eq!(shown(got[1].local.ip()).to_string(), "127.0.0.1");
        assert!(got[1].users.is_empty());
    }

    #[test]
    fn a_name_with_a_newline_continues_its_record() {
        let text = "1 0 127.0.0.1:5 127.0.6.1:7000 users:((\"ev\nil\",pid=7,fd=3)) ino:9 sk:1 -->\n\
                    1 0 127.0.0.1:6 127.0.6.1:7000 ino:8 sk:2 -->\n";
        let got = parse(text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].users[0].comm, "ev\nil");
        assert_eq!(got[0].users[0].pid, 7);
    }
}
