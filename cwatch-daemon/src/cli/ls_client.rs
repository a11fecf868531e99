/*!
How `cwatch ls` asks the daemon: `/api/v1/sockets` page by page (the filters
done by the daemon), with the basic auth credentials of [`AUTH_ENV`] when
they are set. Only "nothing listens there" lets `ls` read the kernel itself
instead; a daemon that refuses (401), or something that does not answer in
plain HTTP, is an error of one line.
*/
use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;

use super::LsArgs;
use crate::http::wire::ApiSocket;

/// Sockets asked for per request; `ls` follows the cursor for the rest.
const PAGE: usize = 10_000;

/// The environment variable with the daemon's basic auth credentials.
pub const AUTH_ENV: &str = "CWATCH_BASIC_AUTH";

/// Why the daemon's list could not be had.
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
pub(super) fn fetch(args: &LsArgs, target: SocketAddr) -> Result<Vec<ApiSocket>, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let credentials = std::env::var(AUTH_ENV).ok().filter(|c| !c.is_empty());
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = format!("http://{target}/api/v1/sockets");
        let mut request = agent.get(&url).query_pairs(query(args, cursor.as_deref()));
        if let Some(c) = &credentials {
            request = request.header("Authorization", basic_auth(c));
        }
        let mut response = request.call().map_err(|err| match err {
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                FetchError::NoDaemon(e.to_string())
            }
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                FetchError::NoDaemon(err.to_string())
            }
            ureq::Error::Io(e) => FetchError::Other(anyhow::anyhow!(
                "something listens at {target} but did not answer in plain HTTP ({e}); \
                 `cwatch ls` does not speak TLS"
            )),
            other => FetchError::Other(anyhow::anyhow!("asking the daemon at {url}: {other}")),
        })?;
        let status = response.status();
        if status == 401 {
            return Err(FetchError::Other(anyhow::anyhow!(match credentials {
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
    fn query_and_credentials_are_encoded() {
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
        assert_eq!(basic_auth("alice:s3:cret"), "Basic YWxpY2U6czM6Y3JldA==");
    }
}
