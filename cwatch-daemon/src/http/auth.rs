/*!
HTTP basic authentication against the web config's bcrypt hashes. Checking a
bcrypt hash costs tens of milliseconds by design, so it runs on the blocking
pool, and a credential that passed is remembered (as its SHA-256, never in
clear) so that scrapes every few seconds do not each pay for it.
*/
use std::{collections::HashSet, sync::Mutex};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::App;

/// Credentials that passed, by SHA-256 of the Authorization header; cleared
/// when the web config is reloaded.
#[derive(Default)]
pub struct AuthCache {
    passed: Mutex<HashSet<[u8; 32]>>,
}

const CACHE_MAX: usize = 256;

impl AuthCache {
    pub fn clear(&self) {
        self.passed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.passed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        if passed.len() >= CACHE_MAX {
            passed.clear();
        }
        passed.insert(key);
    }
}

/// `user:password` from a `Basic` Authorization header value.
pub fn decode_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Middleware: passes the request on when no users are configured or the
/// credentials match; 401 with a challenge otherwise.
pub async fn require(State(app): State<App>, request: Request, next: Next) -> Response {
    let security = app.web.security();
    if security.users.is_empty() {
        return next.run(request).await;
    }
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
    if app.web.auth_cache.contains(&key) {
        return next.run(request).await;
    }
    let ok = match decode_basic(&value) {
        Some((user, pass)) => match security.users.get(&user).cloned() {
            Some(hash) => tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash))
                .await
                .is_ok_and(|r| r.unwrap_or(false)),
            None => false,
        },
        None => false,
    };
    if ok {
        app.web.auth_cache.insert(key);
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"cwatch\"")],
        "unauthorized\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_decodes() {
        // "alice:s3:cret" — the password may contain colons.
        assert_eq!(
            decode_basic("Basic YWxpY2U6czM6Y3JldA=="),
            Some(("alice".into(), "s3:cret".into()))
        );
        assert_eq!(decode_basic("Bearer abc"), None);
        assert_eq!(decode_basic("Basic !!!"), None);
        assert_eq!(decode_basic("Basic YWxpY2U="), None, "no colon");
    }
}
