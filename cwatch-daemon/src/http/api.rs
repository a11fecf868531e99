/*!
`GET /api/v1/sockets`: one JSON object per tracked socket, oldest first, with
exactly the keys DESIGN.md lists. The serde types live here, apart from the
table's types, so the wire format changes only on purpose; `cwatch ls` reads
them back with the same types.
*/
use serde::{Deserialize, Serialize};

use crate::{
    aging::{age, is_leaked},
    table::{DeadEntry, SockEntry, SocketTable},
};

/// One holder of a socket: a process and the fd it holds it under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub fd: Option<i32>,
}

/// One socket, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiSocket {
    pub cookie: u64,
    pub state: String,
    pub direction: String,
    pub local_addr: String,
    pub local_port: u16,
    pub peer_addr: String,
    pub peer_port: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub fd: Option<i32>,
    pub holders: Vec<Holder>,
    pub netns: u32,
    pub age_seconds: f64,
    pub age_estimated: bool,
    pub leaked: bool,
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
        }
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

/// Every socket in the table, oldest first.
pub fn sockets(
    table: &SocketTable,
    now_ns: u64,
    leak_after: std::time::Duration,
) -> Vec<ApiSocket> {
    let mut out: Vec<ApiSocket> = table
        .oldest_first()
        .into_iter()
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
                "state"
            ]
        );
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
    fn unattributed_sockets_have_null_owner_and_no_holders() {
        let mut t = SocketTable::new();
        t.insert(SockEntry::from_record(&record(12, 0, None)));
        let s = &sockets(&t, 1, Duration::from_secs(60))[0];
        assert_eq!((s.pid, s.comm.as_deref(), s.holders.len()), (None, None, 0));
        assert_eq!(s.direction, "inbound");
        assert!(!s.leaked);
    }
}
