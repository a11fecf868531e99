/*!
The query of `GET /api/v1/sockets`: filters (`leaked`, `pid`, `peer`) and
pagination (`limit`, `cursor`). The answer stays the contract's JSON array,
oldest first; when more sockets follow, the `X-Next-Cursor` header carries
the cursor for the next page. A cursor names the last socket returned (its
start time and cookie), so pages neither skip nor repeat sockets while the
table changes underneath; sockets that entered CLOSE_WAIT meanwhile come on
later pages, since they are younger.
*/
use std::{fmt, str::FromStr};

use super::wire::{PeerFilter, Selectable, Selection};
use crate::table::SockEntry;

/// Most sockets one page may hold.
pub const MAX_LIMIT: usize = 100_000;

/// Position of the last socket of a page: CLOSE_WAIT sockets come before
/// dead ones, each by (start_ns, cookie).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub dead: bool,
    pub start_ns: u64,
    pub cookie: u64,
}

impl Cursor {
    pub fn at(dead: bool, entry: &SockEntry) -> Self {
        Self {
            dead,
            start_ns: entry.start_ns,
            cookie: entry.cookie,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = if self.dead { "d" } else { "" };
        write!(f, "{part}{:x}-{:x}", self.start_ns, self.cookie)
    }
}

impl FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("cursor {s:?} is not one this daemon gave out");
        let (dead, rest) = match s.strip_prefix('d') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (a, b) = rest.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            dead,
            start_ns: u64::from_str_radix(a, 16).map_err(|_| bad())?,
            cookie: u64::from_str_radix(b, 16).map_err(|_| bad())?,
        })
    }
}

/// A validated query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketQuery {
    pub leaked: Option<bool>,
    pub pid: Option<u32>,
    pub peer: Option<PeerFilter>,
    pub limit: Option<usize>,
    pub cursor: Option<Cursor>,
}

impl SocketQuery {
    /// From the query's (key, value) pairs; unknown keys and bad values are
    /// errors (answered with 400 and this text).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut q = SocketQuery::default();
        for (key, value) in pairs {
            let bad = |what: &str| format!("{key}={value:?}: {what}");
            match key.as_str() {
                "leaked" => {
                    q.leaked = Some(match value.as_str() {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("expected true or false")),
                    })
                }
                "pid" => q.pid = Some(value.parse().map_err(|_| bad("expected a pid"))?),
                "peer" => q.peer = Some(PeerFilter::parse(value).map_err(|e| bad(&e))?),
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = Some(n),
                    _ => return Err(bad(&format!("expected 1 to {MAX_LIMIT}"))),
                },
                "cursor" => q.cursor = Some(value.parse().map_err(|e: String| bad(&e))?),
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?}; use leaked, pid, peer, limit, cursor"
                    ));
                }
            }
        }
        Ok(q)
    }

    /// The filters, as the client applies them too.
    pub fn selection(&self) -> Selection {
        Selection {
            leaked: self.leaked,
            pid: self.pid,
            peer: self.peer,
        }
    }

    /// Whether `entry` passes the filters (`leaked` is decided by the caller,
    /// who knows the time; the cursor by the caller, who knows the order).
    /// `pid` matches any process holding the socket.
    pub fn matches(&self, entry: &SockEntry, leaked: bool) -> bool {
        self.selection().matches(entry, leaked)
    }
}

impl Selectable for SockEntry {
    fn peer(&self) -> Option<(std::net::IpAddr, u16)> {
        Some((self.peer.ip(), self.peer.port()))
    }

    fn held_by(&self, pid: u32) -> bool {
        self.owner.is_some_and(|o| o.pid == pid) || self.holders.iter().any(|h| h.pid == pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::record;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_filters_and_rejects_nonsense() {
        let q = SocketQuery::from_pairs(&pairs(&[
            ("leaked", "true"),
            ("pid", "42"),
            ("peer", "127.0.1.1:7000"),
            ("limit", "10"),
            ("cursor", "a-b"),
        ]))
        .unwrap();
        assert_eq!(q.leaked, Some(true));
        assert_eq!(q.pid, Some(42));
        assert_eq!(q.peer.unwrap().port, Some(7000));
        assert_eq!(
            q.cursor,
            Some(Cursor {
                dead: false,
                start_ns: 10,
                cookie: 11
            })
        );
        for (k, v, needle) in [
            ("limit", "0", "expected 1 to"),
            ("limit", "many", "expected 1 to"),
            ("pid", "-3", "expected a pid"),
            ("peer", "somehost", "not ADDR"),
            ("cursor", "zz", "not one this daemon"),
            ("leaked", "maybe", "true or false"),
            ("sort", "age", "unknown parameter"),
        ] {
            let err = SocketQuery::from_pairs(&pairs(&[(k, v)])).unwrap_err();
            assert!(err.contains(needle), "{k}={v}: {err}");
        }
    }

    #[test]
    fn matches_pid_peer_and_cursor() {
        let e = SockEntry::from_record(&record(5, 100, Some((42, "leaky"))));
        let q = |list: &[(&str, &str)]| SocketQuery::from_pairs(&pairs(list)).unwrap();
        assert!(q(&[("pid", "42"), ("peer", "127.0.1.1")]).matches(&e, false));
        assert!(!q(&[("pid", "43")]).matches(&e, false));
        assert!(!q(&[("peer", "127.0.1.1:7001")]).matches(&e, false));
        assert!(q(&[("peer", "[::ffff:127.0.1.1]:7000")]).matches(&e, false));
        assert!(!q(&[("leaked", "true")]).matches(&e, false));
        let at = Cursor::at(false, &e);
        assert_eq!(at.to_string().parse::<Cursor>().unwrap(), at);
        let dead = Cursor::at(true, &e);
        assert_eq!(dead.to_string(), "d64-5");
        assert_eq!(dead.to_string().parse::<Cursor>().unwrap(), dead);
        assert!(dead > at, "dead sockets come after CLOSE_WAIT ones");
    }
}
