/*!
`GET /api/v1/sockets`: one JSON object per tracked socket, oldest first, with
exactly the keys the contract lists ([`super::wire`]), made from the table's
entries and selected by the query; `site` and `stack` from the provenance
of each socket ([`crate::sites`]).
*/
use super::query::{Cursor, SocketQuery};
pub use super::wire::{ApiFrame, ApiSocket, ApiStack, Holder};
use crate::{
    sites::{Provenance, Sites},
    table::{DeadEntry, SockEntry, SocketTable, age, is_leaked},
};

impl ApiStack {
    pub fn of(stack: &cwatch_stacks::Stack) -> Self {
        Self {
            frames: stack
                .frames
                .iter()
                .map(|f| ApiFrame {
                    symbol: f.symbol.clone(),
                    module: f.module.clone(),
                    offset: f.offset,
                    file: f.file.clone(),
                    line: f.line,
                    build_id: f.build_id.clone(),
                    inlined: f.inlined,
                })
                .collect(),
            partial: stack.partial,
        }
    }
}

impl ApiSocket {
    pub fn of(entry: &SockEntry, now_ns: u64, leak_after: std::time::Duration) -> Self {
        let age = age(now_ns, entry.start_ns);
        let mut holders: Vec<Holder> = entry
            .holders
            .iter()
            .map(|h| Holder {
                pid: h.pid,
                comm: h.comm.as_str().into_owned(),
                fd: Some(h.fd),
            })
            .collect();
        if holders.is_empty()
            && let Some(o) = entry.owner
        {
            // No fd found (not looked up yet, or unaccepted): the process
            // the kernel named, fd unknown.
            holders.push(Holder {
                pid: o.pid,
                comm: o.comm.as_str().into_owned(),
                fd: None,
            });
        }
        Self {
            cookie: entry.cookie,
            state: "CLOSE_WAIT".to_string(),
            direction: entry.direction.as_str().to_string(),
            local_addr: entry.local.ip().to_string(),
            local_port: entry.local.port(),
            peer_addr: entry.peer.ip().to_string(),
            peer_port: entry.peer.port(),
            pid: entry.owner.map(|o| o.pid),
            comm: entry.owner.map(|o| o.comm.as_str().into_owned()),
            fd: entry.owner_fd(),
            holders,
            netns: entry.netns,
            age_seconds: age.as_secs_f64(),
            age_estimated: entry.age_estimated,
            leaked: is_leaked(age, leak_after),
            site: None,
            stack: None,
        }
    }

    /// With `site` and `stack` from `provenance`.
    pub fn with_provenance(mut self, provenance: Option<&Provenance>) -> Self {
        if let Some(p) = provenance {
            self.site = p.site.clone();
            self.stack = Some(ApiStack::of(&p.stack));
        }
        self
    }

    /// A dead socket still held: the kernel closed it, an fd still holds
    /// it. Always leaked.
    pub fn of_dead(dead: &DeadEntry, now_ns: u64, leak_after: std::time::Duration) -> Self {
        let mut api = Self::of(&dead.sock, now_ns, leak_after);
        api.state = "CLOSE".to_string();
        api.leaked = true;
        api
    }
}

/// The keys of the sockets matching `query` and `keep` (the configured
/// filters; `None`: there are none), in no order (a caller holding the
/// table's lock sorts them after letting it go: a million take tens of ms).
/// Without a selection or filters they come straight from the table's rows,
/// no entry made.
pub fn matching(
    table: &SocketTable,
    now_ns: u64,
    leak_after: std::time::Duration,
    query: &SocketQuery,
    keep: Option<&dyn Fn(&SockEntry) -> bool>,
) -> Vec<Cursor> {
    let after = |at: &Cursor| query.cursor.is_none_or(|c| *at > c);
    let selects = query.selection() != Default::default();
    let mut keys: Vec<Cursor> = if selects || keep.is_some() {
        table
            .iter()
            .filter(|e| {
                let leaked = is_leaked(age(now_ns, e.start_ns), leak_after);
                query.matches(e, leaked) && keep.is_none_or(|k| k(e))
            })
            .map(|e| Cursor::at(false, &e))
            .filter(after)
            .collect()
    } else {
        table
            .keys()
            .map(|(cookie, start_ns, _)| Cursor {
                dead: false,
                start_ns,
                cookie,
            })
            .filter(after)
            .collect()
    };
    keys.extend(
        table
            .dead()
            .filter(|d| d.verified)
            .filter(|d| query.matches(&d.sock, true) && keep.is_none_or(|k| k(&d.sock)))
            .map(|d| Cursor::at(true, &d.sock))
            .filter(after),
    );
    keys
}

/// The API object of the socket at `key`, if it is still there.
fn object(
    table: &SocketTable,
    now_ns: u64,
    leak_after: std::time::Duration,
    key: &Cursor,
    sites: &Sites,
) -> Option<ApiSocket> {
    let socket = if key.dead {
        table
            .dead_entry(key.cookie)
            .map(|d| ApiSocket::of_dead(d, now_ns, leak_after))
    } else {
        table
            .get(key.cookie)
            .map(|e| ApiSocket::of(&e, now_ns, leak_after))
    }?;
    Some(socket.with_provenance(sites.get(key.cookie).as_deref()))
}

/// One page: the sockets matching `query` (and `keep`, the configured
/// filters), oldest first, at most `query.limit`; plus the cursor of the next
/// page when more match. CLOSE_WAIT sockets come first, then the dead ones
/// still held (always leaked), each part oldest first.
pub fn select(
    table: &SocketTable,
    now_ns: u64,
    leak_after: std::time::Duration,
    query: &SocketQuery,
    keep: Option<&dyn Fn(&SockEntry) -> bool>,
    sites: &Sites,
) -> (Vec<ApiSocket>, Option<Cursor>) {
    let mut keys = matching(table, now_ns, leak_after, query, keep);
    let mut next = None;
    if let Some(limit) = query.limit.filter(|l| *l < keys.len()) {
        // Only the page needs sorting: partition around the limit first.
        keys.select_nth_unstable(limit - 1);
        keys.truncate(limit);
        next = keys.iter().max().copied();
    }
    keys.sort_unstable();
    let page = keys
        .iter()
        .filter_map(|k| object(table, now_ns, leak_after, k, sites))
        .collect();
    (page, next)
}

/// The objects of `keys` as lines of a JSON array (one object a line),
/// `first` telling whether a comma goes before the first one. Sockets that
/// left since `keys` were taken are skipped.
pub fn write_chunk(
    table: &SocketTable,
    now_ns: u64,
    leak_after: std::time::Duration,
    keys: &[Cursor],
    first: &mut bool,
    out: &mut Vec<u8>,
    sites: &Sites,
) {
    for key in keys {
        let Some(api) = object(table, now_ns, leak_after, key, sites) else {
            continue;
        };
        out.extend_from_slice(if *first { b"\n" } else { b",\n" });
        *first = false;
        // Serializing into a Vec cannot fail for these plain types.
        let _ = serde_json::to_writer(&mut *out, &api);
    }
}

/// Every socket in the table, oldest first.
#[cfg(test)]
pub fn sockets(
    table: &SocketTable,
    now_ns: u64,
    leak_after: std::time::Duration,
) -> Vec<ApiSocket> {
    let mut out: Vec<ApiSocket> = table
        .oldest_first()
        .iter()
        .map(|e| ApiSocket::of(e, now_ns, leak_after))
        .collect();
    let mut dead: Vec<&DeadEntry> = table.dead().filter(|d| d.verified).collect();
    dead.sort_unstable_by_key(|d| (d.sock.start_ns, d.sock.cookie));
    out.extend(
        dead.into_iter()
            .map(|d| ApiSocket::of_dead(d, now_ns, leak_after)),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::table::tests::record;

    #[test]
    fn provenance_fills_site_and_stack_with_null_for_the_unknown() {
        let stack = cwatch_stacks::Stack {
            frames: vec![cwatch_stacks::Frame {
                symbol: None,
                module: Some("/srv/app".into()),
                offset: Some(0x11ec),
                ..Default::default()
            }],
            partial: true,
        };
        let p = Provenance {
            site: Some("app+0x11ec".into()),
            stack,
        };
        let mut t = SocketTable::new();
        t.insert(SockEntry::from_record(&record(11, 1, Some((7, "app")))));
        let entry = t.get(11).unwrap();
        let api = ApiSocket::of(&entry, 2, Duration::from_secs(2)).with_provenance(Some(&p));
        let json = serde_json::to_value(&api).unwrap();
        assert_eq!(json["site"], "app+0x11ec");
        assert_eq!(
            json["stack"],
            serde_json::json!({"frames": [{"symbol": null, "module": "/srv/app",
                "offset": 0x11ec, "file": null, "line": null, "build_id": null,
                "inlined": false}], "partial": true})
        );
    }

    #[test]
    fn keys_are_exactly_the_contract() {
        let mut t = SocketTable::new();
        t.insert(SockEntry::from_record(&record(
            11,
            1_000_000_000,
            Some((7, "app")),
        )));
        let json =
            serde_json::to_value(sockets(&t, 3_500_000_000, Duration::from_secs(2))).unwrap();
        let obj = json[0].as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            vec![
                "age_estimated",
                "age_seconds",
                "comm",
                "cookie",
                "direction",
                "fd",
                "holders",
                "leaked",
                "local_addr",
                "local_port",
                "netns",
                "peer_addr",
                "peer_port",
                "pid",
                "site",
                "stack",
                "state"
            ]
        );
        assert_eq!(json[0]["site"], serde_json::Value::Null);
        assert_eq!(json[0]["stack"], serde_json::Value::Null);
        assert_eq!(json[0]["cookie"], 11);
        assert_eq!(json[0]["state"], "CLOSE_WAIT");
        assert_eq!(json[0]["direction"], "outbound");
        assert_eq!(json[0]["peer_addr"], "127.0.1.1");
        assert_eq!(json[0]["peer_port"], 7000);
        assert_eq!(json[0]["age_seconds"], 2.5);
        assert_eq!(json[0]["leaked"], true);
        assert_eq!(json[0]["fd"], serde_json::Value::Null);
        assert_eq!(
            json[0]["holders"],
            serde_json::json!([{"pid": 7, "comm": "app", "fd": null}])
        );
    }

    #[test]
    fn pages_walk_every_socket_once_in_order() {
        let mut t = SocketTable::new();
        for cookie in 1..=25u64 {
            // Several sockets share a start time: the cookie breaks ties.
            t.insert(SockEntry::from_record(&record(
                cookie,
                (cookie % 7) * 1_000,
                None,
            )));
        }
        let mut query = SocketQuery {
            limit: Some(4),
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let (page, next) = select(
                &t,
                10_000,
                Duration::from_secs(1),
                &query,
                None,
                &Sites::new(),
            );
            assert!(page.len() <= 4);
            seen.extend(page.iter().map(|s| s.cookie));
            match next {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        let all: Vec<u64> = sockets(&t, 10_000, Duration::from_secs(1))
            .iter()
            .map(|s| s.cookie)
            .collect();
        assert_eq!(seen, all, "pages concatenate to the full list");
        let (odd, _) = select(
            &t,
            10_000,
            Duration::from_secs(1),
            &SocketQuery::default(),
            Some(&|e: &SockEntry| e.cookie % 2 == 1),
            &Sites::new(),
        );
        assert_eq!(odd.len(), 13);
    }

    #[test]
    fn unattributed_sockets_have_null_owner_and_no_holders() {
        let mut t = SocketTable::new();
        t.insert(SockEntry::from_record(&record(12, 0, None)));
        let s = &sockets(&t, 1, Duration::from_secs(60))[0];
        assert_eq!((s.pid, s.comm.as_deref(), s.holders.len()), (None, None, 0));
        assert_eq!(s.direction, "inbound");
        assert!(!s.leaked);
    }
}
