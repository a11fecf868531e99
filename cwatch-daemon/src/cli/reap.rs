/*!
`cwatch reap`: destroys leaked CLOSE_WAIT sockets, as `ss -K` does, on an
operator's word only. It asks the running daemon for the sockets and their
ages the way `cwatch ls` does ([`super::ls_client`]: same `--listen`,
`--config`, credentials), keeps those in CLOSE_WAIT, leaked, and at least
`--older-than` old (`--pid`, `--peer` are the daemon's filters), and then:

- without `--yes` lists them and destroys nothing;
- with `--yes` destroys each with one sock_diag `SOCK_DESTROY` naming its
  exact 5-tuple and cookie (a socket that closed meanwhile, or whose ends a
  new socket has now, is not hit: the kernel matches the cookie), then
  reports the cookies it destroyed to the daemon (`POST /api/v1/reaped`),
  which checks them and counts them in `cwatch_reaped_sockets_total`.

Only sockets of this process's network namespace are destroyed; the others
are skipped, with a line saying so. Destroying a socket frees the kernel's
socket memory and the peer's resources (the peer gets a RST), not the
leaking process's fd: the socket is then a dead socket held
(`cwatch_process_dead_sockets_held`) until the program's own close().

A kernel built without `CONFIG_INET_DIAG_DESTROY` refuses (`EOPNOTSUPP`):
one line, exit 2 ([`DestroyUnsupported`]).
*/
use std::{collections::HashMap, io::Write as _, net::SocketAddr, time::Duration};

use anyhow::Context as _;

use super::{
    LsArgs, ReapArgs,
    ls_client::{Client, FetchError},
    ls_render,
};
use crate::{http::wire::ApiSocket, kernel_view::sockdiag};

/// The kernel cannot destroy sockets (no `CONFIG_INET_DIAG_DESTROY`).
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel cannot destroy sockets (SOCK_DESTROY: EOPNOTSUPP; it needs \
     CONFIG_INET_DIAG_DESTROY=y); nothing was destroyed"
)]
pub struct DestroyUnsupported;

/// What `cwatch reap` prints after destroying: the fd stays.
pub const FD_NOTE: &str = "Destroying frees the kernel's socket and the peer's resources, not \
the process's fd: each destroyed socket is counted in cwatch_process_dead_sockets_held until \
the program calls close() on it.";

pub fn run(args: &ReapArgs, older_than: Duration, target: SocketAddr) -> anyhow::Result<()> {
    let daemon = Client::new(target);
    let query = LsArgs {
        leaked: true,
        pid: args.pid,
        peer: args.peer.clone(),
        ..Default::default()
    };
    match daemon.summary(&query) {
        Ok(_) => {}
        Err(FetchError::Other(e)) => return Err(e),
        Err(FetchError::NoDaemon(why)) => anyhow::bail!(
            "no daemon answers at {target} ({why}); `cwatch reap` needs its ages \
             (start it, or give --listen/--config)"
        ),
    }
    let all: Vec<ApiSocket> = serde_json::from_reader(daemon.sockets(&query, None)?)
        .context("the daemon sent something that is not the socket list")?;
    let (selected, elsewhere) = select(all, older_than, crate::kernel_view::netns::own_inode());
    let mut out = std::io::stdout().lock();
    if !elsewhere.is_empty() {
        writeln!(
            out,
            "skipping {} selected socket(s) in other network namespaces (cwatch reap destroys \
             only those of its own)",
            elsewhere.len()
        )?;
    }
    // Each still there, exactly (it may have closed since the daemon answered).
    let mut present = Vec::new();
    let mut keepalive = HashMap::new();
    let chosen = selected.len();
    for sock in selected {
        let Some((local, peer)) = ends(&sock) else {
            continue;
        };
        match sockdiag::lookup(local, peer, sock.cookie) {
            Ok(Some(found)) if u32::from(found.state) == cwatch_common::tcp_state::CLOSE_WAIT => {
                keepalive.insert(sock.cookie, found.keepalive);
                present.push((sock, local, peer));
            }
            Ok(_) => {}
            Err(err) => return Err(err).context("asking the kernel about a socket (sock_diag)"),
        }
    }
    if present.len() < chosen {
        // Closed since the daemon answered: never destroyed. (An AF_INET6
        // socket with IPv4-mapped ends is found by its IPv4 ends too: the
        // kernel's exact lookup matches the addresses, not the family.)
        writeln!(
            out,
            "skipping {} selected socket(s) the kernel no longer shows in CLOSE_WAIT",
            chosen - present.len()
        )?;
    }
    let what = describe(args, older_than);
    if present.is_empty() {
        writeln!(out, "no leaked CLOSE_WAIT sockets {what}: nothing to do")?;
        return Ok(());
    }
    let verb = if args.yes {
        "destroying"
    } else {
        "would destroy"
    };
    writeln!(
        out,
        "{verb} {} leaked CLOSE_WAIT socket(s) {what}:",
        present.len()
    )?;
    write!(out, "{:<20} {}", "COOKIE", ls_render::header())?;
    for (sock, ..) in &present {
        write!(
            out,
            "{:<20} {}",
            sock.cookie,
            ls_render::row(sock, &keepalive)
        )?;
    }
    if !args.yes {
        writeln!(
            out,
            "dry run: nothing destroyed (add --yes to destroy them)"
        )?;
        return Ok(());
    }
    let mut destroyed = Vec::new();
    for (sock, local, peer) in &present {
        match sockdiag::destroy(*local, *peer, sock.cookie) {
            Ok(true) => destroyed.push(sock.cookie),
            Ok(false) => writeln!(out, "cookie {}: gone before it was destroyed", sock.cookie)?,
            Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                return Err(DestroyUnsupported.into());
            }
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => anyhow::bail!(
                "the kernel refused to destroy a socket (EPERM): it takes CAP_NET_ADMIN; \
                 {} destroyed before that",
                destroyed.len()
            ),
            Err(err) => {
                return Err(err)
                    .context(format!("destroying the socket of cookie {}", sock.cookie));
            }
        }
    }
    writeln!(
        out,
        "destroyed {} of {} socket(s).",
        destroyed.len(),
        present.len()
    )?;
    if !destroyed.is_empty() {
        writeln!(out, "{FD_NOTE}")?;
        let answer = daemon
            .reaped(destroyed)
            .context("reporting the destroyed sockets to the daemon")?;
        for refused in &answer.refused {
            writeln!(
                out,
                "the daemon did not count cookie {}: {}",
                refused.cookie, refused.why
            )?;
        }
    }
    Ok(())
}

/// The daemon's leaked sockets that are in CLOSE_WAIT and at least
/// `older_than` old, oldest first: those of `own_netns`, and the others.
pub fn select(
    sockets: Vec<ApiSocket>,
    older_than: Duration,
    own_netns: Option<u32>,
) -> (Vec<ApiSocket>, Vec<ApiSocket>) {
    let mut chosen: Vec<ApiSocket> = sockets
        .into_iter()
        .filter(|s| {
            s.state == "CLOSE_WAIT" && s.leaked && s.age_seconds >= older_than.as_secs_f64()
        })
        .collect();
    chosen.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
    chosen.into_iter().partition(|s| Some(s.netns) == own_netns)
}

fn ends(sock: &ApiSocket) -> Option<(SocketAddr, SocketAddr)> {
    Some((
        SocketAddr::new(sock.local_addr.parse().ok()?, sock.local_port),
        SocketAddr::new(sock.peer_addr.parse().ok()?, sock.peer_port),
    ))
}

/// "older than 10m, pid 42, peer 10.0.0.1:7000".
fn describe(args: &ReapArgs, older_than: Duration) -> String {
    let mut text = format!("older than {}", humantime::format_duration(older_than));
    if let Some(pid) = args.pid {
        text += &format!(", pid {pid}");
    }
    if let Some(peer) = &args.peer {
        text += &format!(", peer {}", crate::text::for_terminal(peer));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(cookie: u64, state: &str, age: f64, leaked: bool, netns: u32) -> ApiSocket {
        ApiSocket {
            cookie,
            state: state.into(),
            direction: "outbound".into(),
            local_addr: "127.0.0.1".into(),
            local_port: 40000,
            peer_addr: "127.0.0.2".into(),
            peer_port: 7000,
            pid: Some(42),
            comm: Some("leaky".into()),
            fd: Some(3),
            holders: vec![],
            netns,
            age_seconds: age,
            age_estimated: false,
            leaked,
            site: None,
            stack: None,
        }
    }

    #[test]
    fn only_old_leaked_close_wait_sockets_of_this_namespace_are_chosen() {
        let sockets = vec![
            sock(1, "CLOSE_WAIT", 100.0, true, 7),
            sock(2, "CLOSE_WAIT", 30.0, true, 7),
            sock(3, "CLOSE", 500.0, true, 7),
            sock(4, "CLOSE_WAIT", 200.0, false, 7),
            sock(5, "CLOSE_WAIT", 300.0, true, 8),
            sock(6, "CLOSE_WAIT", 60.0, true, 7),
        ];
        let (here, elsewhere) = select(sockets, Duration::from_secs(60), Some(7));
        let cookies: Vec<u64> = here.iter().map(|s| s.cookie).collect();
        assert_eq!(cookies, [1, 6], "oldest first, 60s included");
        assert_eq!(elsewhere.iter().map(|s| s.cookie).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn the_selection_is_described() {
        let args = ReapArgs {
            pid: Some(42),
            peer: Some("127.0.0.2:7000".into()),
            ..Default::default()
        };
        assert_eq!(
            describe(&args, Duration::from_secs(600)),
            "older than 10m, pid 42, peer 127.0.0.2:7000"
        );
    }
}
