/*!
`cwatch ls`: asks the running daemon and prints, first, the counts — totals,
per peer, per process (the incident's `ss … | uniq -c`, done right), from
the daemon's groups and so as fast at a million sockets as at ten — then the
oldest sockets like `ss`, one row each (`--limit`, or every one with
`--all`, streamed as the daemon writes them). `--json` prints the API's
objects instead; with `--all` the daemon's answer goes to stdout as it
arrives.

When no daemon answers it reads the kernel's socket table itself
([`super::ls_direct`]), says so, and marks every age as estimated. The
KEEPALIVE column comes from the kernel either way. The text is made in
[`super::ls_render`].

A daemon behind basic auth answers only with credentials, which `ls` takes
from [`super::ls_client::AUTH_ENV`] (`user:password`; an environment
variable, not a flag, so that it stays out of the process list). Without
them, or with wrong ones, it prints nothing but one line saying so: it gets
no more than the endpoint allows, and does not fall back to reading the
kernel while a daemon answers.
*/
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context as _;

use super::{
    LsArgs,
    ls_client::{Client, FetchError},
    ls_direct, ls_render, ls_stacks,
};
use crate::http::wire::{ApiSocket, PeerFilter, Selection};

/// Above this many rows the KEEPALIVE column comes from one dump of the
/// kernel's CLOSE_WAIT sockets; below, from one exact question per row.
const LOOKUPS_MAX: usize = 500;

pub fn run(args: &LsArgs, target: SocketAddr, leak_after: Duration) -> anyhow::Result<()> {
    let daemon = Client::new(target);
    let mut summary = match daemon.summary(args) {
        Ok(s) => s,
        Err(FetchError::Other(e)) => return Err(e),
        Err(FetchError::NoDaemon(why)) => return direct(args, target, leak_after, &why),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut body = daemon.sockets(args, (!args.all).then_some(args.limit))?;
        if args.all {
            std::io::copy(&mut body, &mut out)?;
        } else {
            let page: Vec<ApiSocket> = serde_json::from_reader(body)
                .context("the daemon sent something that is not the socket list")?;
            serde_json::to_writer_pretty(&mut out, &page)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    if !args.stacks {
        summary.by_site.clear();
    }
    out.write_all(ls_render::summary_text(&summary).as_bytes())?;
    let shown = summary.sockets + summary.dead;
    let body = daemon.sockets(args, (!args.all).then_some(args.limit))?;
    let rows = if args.all {
        let keepalive = ls_direct::keepalive_by_cookie();
        writeln!(out, "\n{}", header(args.stacks).trim_end())?;
        stream_rows(body, &mut out, &keepalive, args.stacks)?
    } else {
        let page: Vec<ApiSocket> = serde_json::from_reader(body)
            .context("the daemon sent something that is not the socket list")?;
        let keepalive = keepalive_of(&page);
        out.write_all(b"\n")?;
        out.write_all(header(args.stacks).as_bytes())?;
        for sock in &page {
            out.write_all(row(sock, &keepalive, args.stacks).as_bytes())?;
        }
        page.len() as u64
    };
    if rows < shown {
        writeln!(
            out,
            "... the oldest {rows} of {shown} shown (--limit N for more, --all for every one)"
        )?;
    }
    Ok(())
}

/// No daemon: the kernel's own table, this namespace only.
fn direct(
    args: &LsArgs,
    target: SocketAddr,
    leak_after: Duration,
    why: &str,
) -> anyhow::Result<()> {
    let all = ls_direct::sockets(&crate::owners::ProcRoot::real(), leak_after)
        .context("reading the kernel's socket table (sock_diag)")?;
    eprintln!(
        "cwatch: no daemon answers at {target} ({why}); reading the kernel's socket \
         table directly: this network namespace only, ages estimated from the last \
         ACK (marked ~), leak-after {}{}",
        humantime::format_duration(leak_after),
        ls_direct::visibility_note(&all)
    );
    let selection = selection(args);
    let mut sockets: Vec<ApiSocket> = all
        .into_iter()
        .filter(|s| selection.matches(s, s.leaked))
        .collect();
    let mut out = std::io::stdout().lock();
    let summary = ls_render::summarize(&sockets);
    if !args.all {
        sockets.truncate(args.limit);
    }
    if args.json {
        serde_json::to_writer_pretty(&mut out, &sockets)?;
        writeln!(out)?;
        return Ok(());
    }
    out.write_all(ls_render::summary_text(&summary).as_bytes())?;
    let keepalive = ls_direct::keepalive_by_cookie();
    out.write_all(b"\n")?;
    out.write_all(ls_render::header().as_bytes())?;
    for sock in &sockets {
        out.write_all(ls_render::row(sock, &keepalive).as_bytes())?;
    }
    Ok(())
}

/// Rows of a streamed answer (a JSON array, one object a line), printed as
/// they come; how many.
fn stream_rows(
    body: impl Read,
    out: &mut impl Write,
    keepalive: &HashMap<u64, Option<Duration>>,
    stacks: bool,
) -> anyhow::Result<u64> {
    let mut n = 0;
    for line in BufReader::new(body).lines() {
        let line = line.context("reading the daemon's answer")?;
        let object = line.trim().trim_start_matches(',').trim_end_matches(',');
        if !object.starts_with('{') {
            continue; // the array's brackets
        }
        let sock: ApiSocket = serde_json::from_str(object)
            .context("the daemon sent something that is not the socket list")?;
        out.write_all(row(&sock, keepalive, stacks).as_bytes())?;
        n += 1;
    }
    Ok(n)
}

/// The keepalive timer of each shown socket that lives in this network
/// namespace: one exact question each, or one dump for many.
fn keepalive_of(page: &[ApiSocket]) -> HashMap<u64, Option<Duration>> {
    if page.len() > LOOKUPS_MAX {
        return ls_direct::keepalive_by_cookie();
    }
    let own = crate::kernel_view::netns::own_inode();
    page.iter()
        .filter(|s| Some(s.netns) == own)
        .filter_map(|s| {
            let local = SocketAddr::new(s.local_addr.parse().ok()?, s.local_port);
            let peer = SocketAddr::new(s.peer_addr.parse().ok()?, s.peer_port);
            let found = crate::kernel_view::sockdiag::lookup(local, peer, s.cookie).ok()??;
            (found.cookie == s.cookie).then_some((s.cookie, found.keepalive))
        })
        .collect()
}

/// The column headings, with SITE under `--stacks`.
fn header(stacks: bool) -> String {
    let h = ls_render::header();
    if stacks {
        ls_stacks::with_site(&h, "SITE")
    } else {
        h
    }
}

/// One socket's row, with its site under `--stacks`.
fn row(sock: &ApiSocket, keepalive: &HashMap<u64, Option<Duration>>, stacks: bool) -> String {
    let r = ls_render::row(sock, keepalive);
    if stacks {
        ls_stacks::with_site(&r, ls_stacks::site_of(sock))
    } else {
        r
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_rows_are_read_one_line_at_a_time() {
        let one = r#"{"cookie":5,"state":"CLOSE_WAIT","direction":"outbound","local_addr":"127.0.0.1","local_port":41706,"peer_addr":"127.0.1.1","peer_port":7777,"pid":10,"comm":"a","fd":3,"holders":[],"netns":1,"age_seconds":1.5,"age_estimated":false,"leaked":false}"#;
        let body = format!(
            "[\n{one},\n{}\n]\n",
            one.replace("\"cookie\":5", "\"cookie\":6")
        );
        let mut out = Vec::new();
        let n = stream_rows(body.as_bytes(), &mut out, &HashMap::new(), false).unwrap();
        assert_eq!(n, 2);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.contains("10/a")), "{text}");
        assert!(
            stream_rows(
                &b"[\n{\"nope\":1}\n]\n"[..],
                &mut Vec::new(),
                &HashMap::new(),
                false
            )
            .is_err()
        );
    }
}
