/*!
How `cwatch ls` (and `cwatch reap`) ask the daemon: `/api/v1/summary` for
the counts, then `/api/v1/sockets` for the oldest rows (or all of them, read
as a stream), the filters done by the daemon; `cwatch reap --yes` reports
what it destroyed to `POST /api/v1/reaped`. All with the basic auth credentials of
[`AUTH_ENV`] when they are set. Only "nothing listens there" lets `ls` read
the kernel itself instead; a daemon that refuses (401), or something that
does not answer in plain HTTP, is an error of one line.
*/
use std::{io::Read, net::SocketAddr, time::Duration};

use anyhow::Context as _;

use super::LsArgs;
use crate::http::wire::{ApiSummary, ReapedAnswer, ReapedReport};

/// The environment variable with the daemon's basic auth credentials.
pub const AUTH_ENV: &str = "CWATCH_BASIC_AUTH";

/// Why the daemon's answer could not be had.
pub(super) enum FetchError {
    /// Nothing listens there: fall back to the kernel.
    NoDaemon(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for FetchError {
    fn from(e: anyhow::Error) -> Self {
        FetchError::Other(e)
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

/// The daemon at one address, with the credentials of [`AUTH_ENV`].
pub(super) struct Client {
    target: SocketAddr,
    agent: ureq::Agent,
    credentials: Option<String>,
}

impl Client {
    pub(super) fn new(target: SocketAddr) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .into();
        let credentials = std::env::var(AUTH_ENV).ok().filter(|c| !c.is_empty());
        Self {
            target,
            agent,
            credentials,
        }
    }

    fn get(
        &self,
        path: &str,
        query: Vec<(&'static str, String)>,
    ) -> Result<ureq::Body, FetchError> {
        let url = format!("http://{}{path}", self.target);
        let mut request = self.agent.get(&url).query_pairs(query);
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", basic_auth(c));
        }
        self.answer(&url, request.call())
    }

    /// `body` as JSON to `path`, with the same credentials and errors.
    fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<ureq::Body, FetchError> {
        let url = format!("http://{}{path}", self.target);
        let mut request = self.agent.post(&url);
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", basic_auth(c));
        }
        self.answer(&url, request.send_json(body))
    }

    /// The body of a successful answer; every failure as one line.
    fn answer(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::Body, FetchError> {
        let target = self.target;
        let mut response = result.map_err(|err| match err {
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                FetchError::NoDaemon(e.to_string())
            }
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                FetchError::NoDaemon(err.to_string())
            }
            ureq::Error::Io(e) => FetchError::Other(anyhow::anyhow!(
                "something listens at {target} but did not answer in plain HTTP ({e}); \
                 `cwatch ls` and `cwatch reap` do not speak TLS"
            )),
            other => FetchError::Other(anyhow::anyhow!("asking the daemon at {url}: {other}")),
        })?;
        let status = response.status();
        if status == 401 {
            return Err(FetchError::Other(anyhow::anyhow!(match self.credentials {
                None => format!(
                    "the daemon at {target} requires credentials (401): set \
                     {AUTH_ENV}=user:password"
                ),
                Some(_) =>
                    format!("the daemon at {target} refused the credentials in {AUTH_ENV} (401)"),
            })));
        }
        if !status.is_success() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            return Err(FetchError::Other(anyhow::anyhow!(
                "the daemon at {target} answered {status}: {}",
                body.trim()
            )));
        }
        Ok(response.into_body())
    }

    pub(super) fn summary(&self, args: &LsArgs) -> Result<ApiSummary, FetchError> {
        let mut body = self.get("/api/v1/summary", query(args, None))?;
        let summary = body
            .read_json()
            .context("the daemon sent something that is not a summary")?;
        Ok(summary)
    }

    /// Reports the cookies of the sockets `cwatch reap` destroyed; the
    /// daemon answers which it counted.
    pub(super) fn reaped(&self, cookies: Vec<u64>) -> anyhow::Result<ReapedAnswer> {
        match self.post("/api/v1/reaped", &ReapedReport { cookies }) {
            Ok(mut body) => body
                .read_json()
                .context("the daemon sent something that is not an answer to the report"),
            Err(FetchError::NoDaemon(why)) => anyhow::bail!("the daemon went away: {why}"),
            Err(FetchError::Other(e)) => Err(e),
        }
    }

    /// The sockets' answer as a reader (`limit`: the oldest that many).
    pub(super) fn sockets(&self, args: &LsArgs, limit: Option<usize>) -> anyhow::Result<impl Read> {
        match self.get("/api/v1/sockets", query(args, limit)) {
            Ok(body) => Ok(body.into_with_config().limit(u64::MAX).reader()),
            Err(FetchError::NoDaemon(why)) => anyhow::bail!("the daemon went away: {why}"),
            Err(FetchError::Other(e)) => Err(e),
        }
    }
}

/// The `Authorization` header value for `user:password`.
fn basic_auth(credentials: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
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
    fn credentials_are_encoded() {
        assert_eq!(basic_auth("alice:s3:cret"), "Basic YWxpY2U6czM6Y3JldA==");
    }
}
