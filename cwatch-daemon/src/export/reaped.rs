/*!
`cwatch_reaped_sockets_total`: the leaked sockets `cwatch reap --yes`
destroyed, as it reports them (`POST /api/v1/reaped` with their cookies).
The daemon never reaps; it only checks each report before counting it, so
the counter stays true whoever posts:

- the cookie is a socket the daemon saw in CLOSE_WAIT and judged leaked
  (older than leak-after) — in its table still, or among the dead sockets
  held (it left CLOSE_WAIT for CLOSE after it was leaked);
- it left CLOSE_WAIT for CLOSE with its fd still held (what a destroy
  leaves; the kernel's own event says so, not the report): a socket the
  table still has in CLOSE_WAIT is looked for again for up to
  [`SETTLE`], the time its event takes through the ring buffer, then
  refused;
- it is counted once, however often it is reported.

A report about a socket in another network namespace than the daemon's is
refused (`cwatch reap` does not destroy those). The cookies counted are
remembered while the table knows them, no longer.
*/
use std::{collections::HashSet, sync::Mutex, time::Duration};

use prometheus::{Encoder as _, IntCounter, Registry, TextEncoder};

use crate::{
    table::{SocketTable, age, is_leaked},
    telemetry::register,
};

/// How long a report waits for the events of sockets still in CLOSE_WAIT
/// in the table (the daemon drains the ring every 50 ms).
pub const SETTLE: Duration = Duration::from_secs(2);

/// The counter, in a registry of its own, and the cookies it counted.
pub struct Reaped {
    registry: Registry,
    total: IntCounter,
    counted: Mutex<HashSet<u64>>,
}

/// What the table says of one reported cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// Dead, held, and leaked before it left CLOSE_WAIT for CLOSE.
    Dead,
    /// Still in the table's CLOSE_WAIT rows, leaked: its end may be on
    /// its way.
    Live,
    /// Not countable, and why.
    Refused(&'static str),
}

/// What the table says of each cookie (pure; the caller holds the lock).
/// Also forgets the counted cookies the table no longer knows.
pub fn classify(
    table: &SocketTable,
    cookies: &[u64],
    now_ns: u64,
    leak_after: Duration,
    own_netns: Option<u32>,
) -> Vec<(u64, Known)> {
    cookies
        .iter()
        .map(|&cookie| {
            let known = if let Some(dead) = table.dead_entry(cookie) {
                let was_leaked = is_leaked(age(dead.left_ns, dead.sock.start_ns), leak_after);
                if Some(dead.sock.netns) != own_netns {
                    Known::Refused("it is in another network namespace")
                } else if !was_leaked {
                    Known::Refused("it was not leaked when it left CLOSE_WAIT")
                } else if u32::from(dead.newstate) != cwatch_common::tcp_state::CLOSE {
                    Known::Refused("it left CLOSE_WAIT for LAST_ACK (closed by its program)")
                } else {
                    Known::Dead
                }
            } else if let Some(entry) = table.get(cookie) {
                if Some(entry.netns) != own_netns {
                    Known::Refused("it is in another network namespace")
                } else if !is_leaked(age(now_ns, entry.start_ns), leak_after) {
                    Known::Refused("it is not leaked")
                } else {
                    Known::Live
                }
            } else {
                Known::Refused("the daemon does not know it")
            };
            (cookie, known)
        })
        .collect()
}

impl Reaped {
    pub fn new() -> Self {
        let registry = Registry::new();
        let total = IntCounter::new(
            "cwatch_reaped_sockets_total",
            "Leaked CLOSE_WAIT sockets destroyed by `cwatch reap --yes` (reported by it, checked by the daemon).",
        )
        .expect("valid counter");
        Self {
            total: register(&registry, total),
            registry,
            counted: Mutex::new(HashSet::new()),
        }
    }

    /// Counts the reported `cookies` that pass the checks; each verdict:
    /// `Ok` counted (now or before), `Err` why not. `classify` looks them
    /// up in the table (under its lock); a socket still in the table's
    /// CLOSE_WAIT rows is looked up again until `wait` has passed, so that
    /// the event of its end, on its way through the ring buffer, can
    /// arrive. `table_knows` says which counted cookies to remember.
    pub fn report(
        &self,
        cookies: &[u64],
        classify: impl Fn(&[u64]) -> Vec<(u64, Known)>,
        table_knows: impl Fn(u64) -> bool,
        wait: Duration,
    ) -> Vec<(u64, Result<(), &'static str>)> {
        let deadline = std::time::Instant::now() + wait;
        let mut verdicts = Vec::with_capacity(cookies.len());
        let mut pending: Vec<u64> = cookies.to_vec();
        loop {
            let mut live = Vec::new();
            for (cookie, known) in classify(&pending) {
                match known {
                    Known::Dead => verdicts.push((cookie, Ok(()))),
                    Known::Refused(why) => verdicts.push((cookie, Err(why))),
                    Known::Live => live.push(cookie),
                }
            }
            if live.is_empty() || std::time::Instant::now() >= deadline {
                verdicts.extend(
                    live.into_iter()
                        .map(|c| (c, Err("it is still in CLOSE_WAIT"))),
                );
                break;
            }
            pending = live;
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        counted.retain(|c| table_knows(*c));
        for (cookie, verdict) in &verdicts {
            if verdict.is_ok() && counted.insert(*cookie) {
                self.total.inc();
                tracing::info!(cookie, "a leaked socket was reaped (cwatch reap --yes)");
            }
        }
        verdicts.sort_by_key(|(c, _)| cookies.iter().position(|x| x == c));
        verdicts
    }

    /// The counter in the text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.total.get()
    }
}

impl Default for Reaped {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{DeadEntry, SockEntry, tests::record};

    const S: u64 = 1_000_000_000;

    fn entry(cookie: u64, start_ns: u64) -> SockEntry {
        let mut e = SockEntry::from_record(&record(cookie, start_ns, Some((42, "leaky"))));
        e.netns = 7;
        e
    }

    #[test]
    fn only_leaked_sockets_that_left_close_wait_for_close_count_once() {
        let mut table = SocketTable::new();
        let leak_after = Duration::from_secs(10);
        // 1: leaked, destroyed (CLOSE); 2: young when it died; 3: closed by
        // its program (LAST_ACK); 4: leaked, still in the table; 5: young,
        // in the table; 6: in another namespace.
        table.insert_dead(DeadEntry::left(entry(1, 0), 20 * S, 7));
        table.insert_dead(DeadEntry::left(entry(2, 15 * S), 20 * S, 7));
        table.insert_dead(DeadEntry::left(entry(3, 0), 20 * S, 9));
        table.insert(entry(4, 0));
        table.insert(entry(5, 25 * S));
        let mut other = entry(6, 0);
        other.netns = 8;
        table.insert(other);
        let known = classify(&table, &[1, 2, 3, 4, 5, 6, 99], 30 * S, leak_after, Some(7));
        let kinds: Vec<&str> = known
            .iter()
            .map(|(_, k)| match k {
                Known::Dead => "dead",
                Known::Live => "live",
                Known::Refused(_) => "refused",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "dead", "refused", "refused", "live", "refused", "refused", "refused"
            ]
        );
        let reaped = Reaped::new();
        let all = [1, 2, 3, 4, 5, 6, 99];
        let look = |c: &[u64]| classify(&table, c, 30 * S, leak_after, Some(7));
        let verdicts = reaped.report(&all, look, |c| c == 1, Duration::ZERO);
        let counted: Vec<u64> = verdicts
            .iter()
            .filter(|(_, v)| v.is_ok())
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(counted, [1]);
        assert_eq!(
            verdicts.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            all,
            "in order"
        );
        assert_eq!(verdicts[3].1, Err("it is still in CLOSE_WAIT"));
        assert_eq!(reaped.total(), 1);
        reaped.report(&all, look, |c| c == 1, Duration::ZERO);
        assert_eq!(reaped.total(), 1, "counted once");
        // A live socket whose end arrives while the report waits counts.
        let mut later = SocketTable::new();
        later.insert_dead(DeadEntry::left(entry(4, 0), 29 * S, 7));
        let calls = std::cell::Cell::new(0);
        let settle = |c: &[u64]| {
            calls.set(calls.get() + 1);
            let t = if calls.get() == 1 { &table } else { &later };
            classify(t, c, 30 * S, leak_after, Some(7))
        };
        let verdicts = reaped.report(&[4], settle, |_| true, Duration::from_secs(5));
        assert_eq!(verdicts, [(4, Ok(()))]);
        assert_eq!((reaped.total(), calls.get()), (2, 2));
        assert!(reaped.render().contains("cwatch_reaped_sockets_total 2"));
    }
}
