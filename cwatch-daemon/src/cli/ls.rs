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
*/
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context as _;

use super::{LsArgs, ls_direct, ls_render};
use crate::http::wire::{ApiSocket, ApiSummary, PeerFilter, Selection};

/// Why the daemon's answer could not be had.
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

/// Above this many rows the KEEPALIVE column comes from one dump of the
/// kernel's CLOSE_WAIT sockets; below, from one exact question per row.
const LOOKUPS_MAX: usize = 500;

pub fn run(args: &LsArgs, target: SocketAddr, leak_after: Duration) -> anyhow::Result<()> {
    let daemon = Client::new(target);
    let summary = match daemon.summary(args) {
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
    out.write_all(ls_render::summary_text(&summary).as_bytes())?;
    let shown = summary.sockets + summary.dead;
    let body = daemon.sockets(args, (!args.all).then_some(args.limit))?;
    let rows = if args.all {
        let keepalive = ls_direct::keepalive_by_cookie();
        writeln!(out, "\n{}", ls_render::header().trim_end())?;
        stream_rows(body, &mut out, &keepalive)?
    } else {
        let page: Vec<ApiSocket> = serde_json::from_reader(body)
            .context("the daemon sent something that is not the socket list")?;
        let keepalive = keepalive_of(&page);
        out.write_all(b"\n")?;
        out.write_all(ls_render::header().as_bytes())?;
        for sock in &page {
            out.write_all(ls_render::row(sock, &keepalive).as_bytes())?;
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
    eprintln!(
        "cwatch: no daemon answers at {target} ({why}); reading the kernel's socket \
         table directly: this network namespace only, ages estimated from the last \
         ACK (marked ~), leak-after {}",
        humantime::format_duration(leak_after)
    );
    let all = ls_direct::sockets(&crate::owners::ProcRoot::real(), leak_after)
        .context("reading the kernel's socket table (sock_diag)")?;
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
        out.write_all(ls_render::row(&sock, keepalive).as_bytes())?;
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
    let own = ls_direct::own_netns();
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

/// `--leaked`, `--pid`, `--peer`: what the daemon selects, and what this
/// side selects when it reads the kernel itself.
fn selection(args: &LsArgs) -> Selection {
    Selection {
        leaked: args.leaked.then_some(true),
        pid: args.pid,
        peer: args.peer.as_deref().and_then(|p| PeerFilter::parse(p).ok()),
    }
}

/// The query's parameters for `args` (filters done by the daemon), with a
/// `limit` when one is given; the HTTP client encodes them.
pub fn query(args: &LsArgs, limit: Option<usize>) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(limit) = limit {
        q.push(("limit", limit.to_string()));
    }
    if args.leaked {
        q.push(("leaked", "true".into()));
    }
    if let Some(pid) = args.pid {
        q.push(("pid", pid.to_string()));
    }
    if let Some(peer) = &args.peer {
        q.push(("peer", peer.clone()));
    }
    q
}

/// The daemon at one address.
struct Client {
    target: SocketAddr,
    agent: ureq::Agent,
}

impl Client {
    fn new(target: SocketAddr) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .into();
        Self { target, agent }
    }

    fn get(
        &self,
        path: &str,
        query: Vec<(&'static str, String)>,
    ) -> Result<ureq::Body, FetchError> {
        let url = format!("http://{}{path}", self.target);
        let response = self.agent.get(&url).query_pairs(query).call();
        let mut response = response.map_err(|err| match err {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                FetchError::NoDaemon(err.to_string())
            }
            other => FetchError::Other(anyhow::anyhow!("asking the daemon at {url}: {other}")),
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            return Err(FetchError::Other(anyhow::anyhow!(
                "the daemon at {} answered {status}: {}",
                self.target,
                body.trim()
            )));
        }
        Ok(response.into_body())
    }

    fn summary(&self, args: &LsArgs) -> Result<ApiSummary, FetchError> {
        let mut body = self.get("/api/v1/summary", query(args, None))?;
        let summary = body
            .read_json()
            .context("the daemon sent something that is not a summary")?;
        Ok(summary)
    }

    /// The sockets' answer as a reader (`limit`: the oldest that many).
    fn sockets(&self, args: &LsArgs, limit: Option<usize>) -> anyhow::Result<impl Read> {
        match self.get("/api/v1/sockets", query(args, limit)) {
            Ok(body) => Ok(body.into_with_config().limit(u64::MAX).reader()),
            Err(FetchError::NoDaemon(why)) => anyhow::bail!("the daemon went away: {why}"),
            Err(FetchError::Other(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_has_the_filters_and_the_limit() {
        let args = LsArgs {
            leaked: true,
            pid: Some(42),
            peer: Some("[::1]:7000".into()),
            ..Default::default()
        };
        assert_eq!(
            query(&args, Some(100)),
            vec![
                ("limit", "100".to_string()),
                ("leaked", "true".into()),
                ("pid", "42".into()),
                ("peer", "[::1]:7000".into()),
            ]
        );
        assert_eq!(query(&LsArgs::default(), None), vec![]);
    }

    #[test]
    fn streamed_rows_are_read_one_line_at_a_time() {
        let one = r#"{"cookie":5,"state":"CLOSE_WAIT","direction":"outbound","local_addr":"127.0.0.1","local_port":41706,"peer_addr":"127.0.1.1","peer_port":7777,"pid":10,"comm":"a","fd":3,"holders":[],"netns":1,"age_seconds":1.5,"age_estimated":false,"leaked":false}"#;
        let body = format!(
            "[\n{one},\n{}\n]\n",
            one.replace("\"cookie\":5", "\"cookie\":6")
        );
        let mut out = Vec::new();
        let n = stream_rows(body.as_bytes(), &mut out, &HashMap::new()).unwrap();
        assert_eq!(n, 2);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.contains("10/a")), "{text}");
        assert!(
            stream_rows(
                &b"[\n{\"nope\":1}\n]\n"[..],
                &mut Vec::new(),
                &HashMap::new()
            )
            .is_err()
        );
    }
}
