/*!
HTTP basic authentication against the web config's bcrypt hashes.

A bcrypt check costs tens of milliseconds of CPU by design, so a client
guessing passwords could make the daemon spend every core on checking them
and starve the scrapes that matter. The work is bounded, as the exporter
toolkit bounds it:

- a credential that passed is remembered (the SHA-256 of its header, never
  the password), so a scraper pays for one check, not one per scrape;
- a credential that failed is remembered too, so a scraper retrying a stale
  password costs one check, not one per retry;
- at most [`CHECKS`] checks run at once, and a failed one keeps its slot as
  long again: a guesser gets at most half a core;
- at most [`QUEUE`] requests wait for a slot; the next are answered `429`
  with `Retry-After: 1` at once, without a check;
- a user that does not exist is checked against a dummy hash, so that the
  time taken does not tell which users exist;
- a refused request closes its connection (`Connection: close`): a guesser
  cannot sit on one of the `--web.max-connections` slots.

Both caches are cleared when the web config is reloaded.
*/
use std::{
    collections::HashSet,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::App;

/// bcrypt checks running at once.
pub const CHECKS: usize = 1;
/// Requests waiting for a check at most; more get 429 at once.
pub const QUEUE: usize = 8;
/// Entries each cache holds at most (it starts over when full).
const CACHE_MAX: usize = 4096;

/// Credentials that passed and failed, by SHA-256 of the Authorization
/// header, and the slots for bcrypt checks.
pub struct AuthCache {
    passed: Mutex<HashSet<[u8; 32]>>,
    failed: Mutex<HashSet<[u8; 32]>>,
    checks: Semaphore,
    waiting: AtomicUsize,
}

impl Default for AuthCache {
    fn default() -> Self {
        Self {
            passed: Mutex::default(),
            failed: Mutex::default(),
            checks: Semaphore::new(CHECKS),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// What the caches know about a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Passed,
    Failed,
    Unknown,
}

/// Counts a request waiting for a check slot; uncounted when dropped (the
/// client may give up while it waits).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AuthCache {
    pub fn clear(&self) {
        for set in [&self.passed, &self.failed] {
            set.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    pub fn known(&self, key: &[u8; 32]) -> Known {
        let has = |set: &Mutex<HashSet<[u8; 32]>>| {
            set.lock().unwrap_or_else(|e| e.into_inner()).contains(key)
        };
        if has(&self.passed) {
            Known::Passed
        } else if has(&self.failed) {
            Known::Failed
        } else {
            Known::Unknown
        }
    }

    pub fn remember(&self, key: [u8; 32], passed: bool) {
        let set = if passed { &self.passed } else { &self.failed };
        let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= CACHE_MAX {
            set.clear();
        }
        set.insert(key);
    }

    /// A check slot, waiting for one only while fewer than [`QUEUE`]
    /// requests wait; `None`: too many wait already.
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        if let Ok(permit) = self.checks.try_acquire() {
            return Some(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let _waiting = Waiting(&self.waiting);
        self.checks.acquire().await.ok()
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

/// What unknown users are checked against (made once, at htpasswd's cost).
fn dummy_hash() -> String {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY
        .get_or_init(|| bcrypt::hash("no such cwatch user", 10).unwrap_or_default())
        .clone()
}

/// Middleware: passes the request on when no users are configured or the
/// credentials match; 401 with a challenge otherwise, 429 while the checks
/// are saturated.
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
    let cache = &app.web.auth_cache;
    match cache.known(&key) {
        Known::Passed => return next.run(request).await,
        Known::Failed => return unauthorized(),
        Known::Unknown => {}
    }
    let Some((user, pass)) = decode_basic(&value) else {
        return unauthorized();
    };
    let (hash, exists) = match security.users.get(&user) {
        Some(hash) => (hash.clone(), true),
        None => (String::new(), false),
    };
    let Some(permit) = cache.slot().await else {
        return busy();
    };
    let started = Instant::now();
    let verified = tokio::task::spawn_blocking(move || {
        let hash = if exists { hash } else { dummy_hash() };
        bcrypt::verify(pass, &hash).unwrap_or(false) && exists
    })
    .await
    .unwrap_or(false);
    cache.remember(key, verified);
    if verified {
        drop(permit);
        return next.run(request).await;
    }
    // The slot stays taken as long again: guessing gets half a core at most.
    tokio::time::sleep(started.elapsed()).await;
    drop(permit);
    unauthorized()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Basic realm=\"cwatch\""),
            (header::CONNECTION, "close"),
        ],
        "unauthorized\n",
    )
        .into_response()
}

fn busy() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1"), (header::CONNECTION, "close")],
        "too many credentials being checked; retry\n",
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

    #[test]
    fn both_verdicts_are_remembered_until_cleared() {
        let cache = AuthCache::default();
        let (good, bad) = ([1; 32], [2; 32]);
        assert_eq!(cache.known(&good), Known::Unknown);
        cache.remember(good, true);
        cache.remember(bad, false);
        assert_eq!(cache.known(&good), Known::Passed);
        assert_eq!(cache.known(&bad), Known::Failed);
        cache.clear();
        assert_eq!(cache.known(&good), Known::Unknown);
        assert_eq!(cache.known(&bad), Known::Unknown);
        for i in 0..=CACHE_MAX as u32 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.remember(key, false);
        }
        assert!(cache.failed.lock().unwrap().len() <= CACHE_MAX, "bounded");
    }

    #[test]
    fn checks_and_waiters_are_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let cache = AuthCache::default();
            let held = cache.slot().await.expect("a free slot");
            // QUEUE requests wait for it; the next one is turned away.
            let mut waiters: Vec<_> = (0..QUEUE).map(|_| Box::pin(cache.slot())).collect();
            for w in &mut waiters {
                let polled = futures_poll_once(w.as_mut()).await;
                assert!(polled.is_none(), "waits while the slot is held");
            }
            assert_eq!(cache.waiting.load(Ordering::Acquire), QUEUE);
            assert!(cache.slot().await.is_none(), "queue full: refused at once");
            // A waiter that gives up is no longer counted.
            waiters.pop();
            assert_eq!(cache.waiting.load(Ordering::Acquire), QUEUE - 1);
            drop(held);
            let next = waiters.remove(0).await;
            assert!(next.is_some(), "the first waiter gets the slot");
        });
    }

    /// Polls `fut` once: `Some` if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
        let mut fut = fut;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
