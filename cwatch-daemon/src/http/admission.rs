/*!
Who gets in when the HTTP port is under abuse. Connections are accepted at
once (none wait in the kernel's backlog behind a flood), up to
[`open_limit`] open at a time; a new connection beyond that makes room by
closing the one that has waited longest without a request being served —
an idle connection or a slowloris one still trickling its headers, never
one whose request is being answered. A scraper that sends its request
when it connects, as Prometheus does, is therefore always the newest and
always served, however many idle or slow connections there are. What each
open connection may cost is bounded by the request head limit
([`MAX_HEAD`]), so memory stays bounded too.
*/
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio_util::sync::CancellationToken;

/// Most bytes of a request head hyper buffers (its minimum is 8 KiB);
/// a longer head gets 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// Connections held open at most, at best (fds permitting).
pub const OPEN_LIMIT: usize = 2048;

/// Descriptors kept for everything else (maps, /proc, netlink).
const FD_RESERVE: u64 = 256;

/// Activity of one connection, shared with its watchdog and the registry.
#[derive(Debug)]
pub struct Activity {
    pub last: Instant,
    /// First byte of a request not yet answered.
    pub busy_since: Option<Instant>,
    /// A write the client does not take.
    pub stalled_since: Option<Instant>,
    /// A whole request reached the handlers and is being answered.
    pub serving: bool,
}

impl Activity {
    pub fn new(now: Instant) -> Self {
        Self {
            last: now,
            busy_since: None,
            stalled_since: None,
            serving: false,
        }
    }

    /// Since when this connection has waited for a request to be served:
    /// its request's first byte, else its last activity (idle).
    fn waiting_since(&self) -> Instant {
        self.busy_since.unwrap_or(self.last)
    }
}

struct Entry {
    activity: Arc<Mutex<Activity>>,
    evict: CancellationToken,
}

/// The open connections.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

/// A connection's place in the registry; it leaves when dropped.
pub struct Admitted {
    registry: Arc<Registry>,
    id: u64,
    /// Cancelled when the connection is closed to make room.
    pub evict: CancellationToken,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection.
    pub fn admit(self: &Arc<Self>, activity: Arc<Mutex<Activity>>) -> Admitted {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        self.lock().insert(
            id,
            Entry {
                activity,
                evict: evict.clone(),
            },
        );
        Admitted {
            registry: Arc::clone(self),
            id,
            evict,
        }
    }

    /// Closes the connection that has waited longest for a request to be
    /// served; false when every one is being served.
    pub fn evict_one(&self, now: Instant) -> bool {
        let mut open = self.lock();
        let victim = open
            .iter()
            .filter(|(_, e)| !e.evict.is_cancelled())
            .filter_map(|(id, e)| {
                let a = e.activity.lock().unwrap_or_else(|p| p.into_inner());
                (!a.serving).then(|| (*id, a.waiting_since().min(now)))
            })
            .min_by_key(|(_, since)| *since)
            .map(|(id, _)| id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(entry) => {
                entry.evict.cancel();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// How many connections to hold open: [`OPEN_LIMIT`], fewer when the fd
/// limit is low, never fewer than the requests served at once.
pub fn open_limit(served_at_once: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let by_fds = usize::try_from(soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    OPEN_LIMIT.min(by_fds).max(served_at_once)
}

/// Raises the soft fd limit to the hard one (systemd's default soft limit
/// is 1024): connections and `/proc` reads need descriptors.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("could not raise RLIMIT_NOFILE: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_longest_waiting_connection_makes_room_never_one_being_served() {
        let registry = Arc::new(Registry::default());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let conn = |activity: Activity| {
            let a = Arc::new(Mutex::new(activity));
            (registry.admit(Arc::clone(&a)), a)
        };
        // Idle since 5 s; a slowloris whose request began at 2 s (still
        // trickling: last byte at 9 s); a scrape whose request began at 9 s.
        let (idle, _) = conn(Activity::new(at(5)));
        let (slow, slow_a) = conn(Activity::new(at(9)));
        slow_a.lock().unwrap().busy_since = Some(at(2));
        let (scrape, scrape_a) = conn(Activity::new(at(9)));
        scrape_a.lock().unwrap().busy_since = Some(at(9));
        // A big answer that began at 1 s and is still being made.
        let (big, big_a) = conn(Activity::new(at(1)));
        big_a.lock().unwrap().busy_since = Some(at(1));
        big_a.lock().unwrap().serving = true;
        assert_eq!(registry.len(), 4);
        assert!(registry.evict_one(at(10)));
        assert!(slow.evict.is_cancelled(), "the slowloris goes first");
        assert!(registry.evict_one(at(10)));
        assert!(idle.evict.is_cancelled());
        assert!(registry.evict_one(at(10)));
        assert!(scrape.evict.is_cancelled());
        assert!(
            !big.evict.is_cancelled(),
            "a request being answered is never closed"
        );
        drop((slow, idle, scrape));
        assert_eq!(registry.len(), 1);
        assert!(!registry.evict_one(at(10)), "nobody left");
        assert!(open_limit(64) >= 64);
    }
}
