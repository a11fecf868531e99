/*!
Reconciliation: brings the socket table back in line with the kernel's own
`CLOSE_WAIT` map, the source of truth, so a lost ring buffer event never leaves
a gauge wrong for longer than one `--reconcile-interval`.

The table lock is held across the map walk. Intake is blocked meanwhile, so
every event it applies afterwards describes a change the walk may or may not
have seen, and applying it is right in both cases (see `sync`).
*/
use std::{collections::HashMap, sync::Arc};

use cwatch_common::SockRecord;
use tracing::{info, warn};

use crate::{
    Shared,
    table::{SockEntry, SocketTable},
};

/// What one pass changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Corrections {
    /// In the kernel, missing from the table (a lost enter event).
    pub added: u64,
    /// In the table, gone from the kernel (a lost leave event).
    pub removed: u64,
}

/// Makes `table` hold exactly the sockets in `kernel`.
///
/// Entries in both keep the table's version (it may carry more, e.g. an
/// owner learned later). An event still in flight is applied after this:
/// an enter re-inserts the same record; a leave for a socket removed here
/// finds no entry and falls back to the kernel record it carries.
pub fn sync(table: &mut SocketTable, kernel: &HashMap<u64, SockRecord>) -> Corrections {
    let mut c = Corrections::default();
    let stale: Vec<u64> = table
        .cookies()
        .filter(|k| !kernel.contains_key(k))
        .collect();
    for cookie in stale {
        table.remove(cookie);
        c.removed += 1;
    }
    for (cookie, rec) in kernel {
        if table.get(*cookie).is_none() {
            table.insert(SockEntry::from_record(rec));
            c.added += 1;
        }
    }
    c
}

/// One pass against the live kernel map.
pub fn run_once(shared: &Shared) -> anyhow::Result<Corrections> {
    let mut table = shared.lock_table();
    let kernel = shared.kernel_records()?;
    let c = sync(&mut table, &kernel);
    drop(table);
    shared.metrics.corrections(c);
    if c != Corrections::default() {
        info!(
            added = c.added,
            removed = c.removed,
            "reconciliation corrected the table"
        );
    }
    Ok(c)
}

/// Reconciles every `reconcile_interval` until aborted.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config().reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first pass already ran at start-up
    loop {
        tick.tick().await;
        let pass = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || run_once(&pass)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!("reconciliation failed: {err:#}"),
            Err(err) => warn!("reconciliation task failed: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::record;

    #[test]
    fn adds_missing_and_drops_stale_entries() {
        let mut table = SocketTable::new();
        for cookie in [1, 2] {
            table.insert(SockEntry::from_record(&record(cookie, 5, None)));
        }
        let kernel: HashMap<u64, SockRecord> = [2, 3]
            .into_iter()
            .map(|c| (c, record(c, 7, Some((9, "k")))))
            .collect();
        let c = sync(&mut table, &kernel);
        assert_eq!(
            c,
            Corrections {
                added: 1,
                removed: 1
            }
        );
        let mut cookies: Vec<u64> = table.cookies().collect();
        cookies.sort_unstable();
        assert_eq!(cookies, vec![2, 3]);
        assert_eq!(
            table.get(2).unwrap().start_ns,
            5,
            "existing entries are kept as they are"
        );
        assert_eq!(table.get(3).unwrap().owner.unwrap().pid, 9);
        assert_eq!(
            sync(&mut table, &kernel),
            Corrections::default(),
            "idempotent"
        );
    }
}
