/*!
`cwatch_leak_site_sockets{site}`: leaked sockets in CLOSE_WAIT by the site
that opened them (`crate::sites`), the configured top N sites kept and the
rest folded into `site="[other]"`; sockets without a known site count as
`site="[unknown]"`, so the series sum to the leaked total
(`cwatch_process_leaked_sockets` summed). Shown while stack capture is on.
*/
use std::collections::HashMap;

use prometheus::{Encoder as _, IntGaugeVec, Opts, Registry, TextEncoder};

use super::Filter;
use crate::{
    sites::{Sites, UNKNOWN_SITE, top_sites},
    table::{SocketTable, age, is_leaked},
};

/// Leaked sockets per site label (before folding). Without filters the
/// scrape looks only at the sockets that have a provenance (a handful of
/// watched processes' sockets, not the table) and counts the rest of
/// `leaked_total` (the per-process gauges' leaked sum at `now_ns`) as
/// [`UNKNOWN_SITE`]; with filters it walks the table, as the per-process
/// summary does.
pub fn count(
    table: &SocketTable,
    now_ns: u64,
    filter: &Filter,
    sites: &Sites,
    leaked_total: u64,
) -> HashMap<String, u64> {
    let leak_after = filter.leak_after();
    let leaked = |start_ns: u64| is_leaked(age(now_ns, start_ns), leak_after);
    if filter.is_empty() {
        let mut counts = sites.count_where(|cookie| table.start_of(cookie).is_some_and(leaked));
        let known: u64 = counts.values().sum();
        let unknown = leaked_total.saturating_sub(known);
        if unknown > 0 {
            *counts.entry(UNKNOWN_SITE.to_string()).or_default() += unknown;
        }
        return counts;
    }
    let cookies: Vec<u64> = table
        .iter()
        .filter(|e| leaked(e.start_ns) && filter.keeps(e))
        .map(|e| e.cookie)
        .collect();
    sites.count(cookies.into_iter())
}

/// The family's text, `top` sites (0: all) plus `[other]`.
pub fn render(counts: HashMap<String, u64>, top: usize) -> String {
    let gauge = match IntGaugeVec::new(
        Opts::new(
            "cwatch_leak_site_sockets",
            "Leaked sockets in CLOSE_WAIT by the code that opened them (first frames of the connect() stack outside libc and runtimes); [unknown]: no stack captured, [other]: sites beyond the series limit.",
        ),
        &["site"],
    ) {
        Ok(g) => g,
        Err(_) => return String::new(),
    };
    for (site, n) in top_sites(counts, top) {
        gauge
            .with_label_values(&[site.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let registry = Registry::new();
    if registry.register(Box::new(gauge)).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    if TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_sockets_with_a_site_and_the_rest_as_unknown() {
        use std::{sync::Arc, time::Duration};

        use crate::{
            config::Config,
            sites::Provenance,
            table::{SockEntry, tests::record},
        };
        let sec = 1_000_000_000;
        let now = 100 * sec;
        let mut table = SocketTable::new();
        // 1, 2, 3, 4 leaked (started 10 s ago or more), 5 young.
        for (cookie, start) in [(1, 10), (2, 50), (3, 60), (4, 90), (5, 99)] {
            table.insert(SockEntry::from_record(&record(cookie, start * sec, None)));
        }
        let sites = Sites::new();
        let at = |site: Option<&str>| {
            Arc::new(Provenance {
                site: site.map(str::to_string),
                stack: cwatch_stacks::Stack::default(),
            })
        };
        sites.set(1, at(Some("open_backend (a.c:3)")));
        sites.set(2, at(Some("open_backend (a.c:3)")));
        sites.set(3, at(None)); // a stack without a site
        sites.set(5, at(Some("young (b.c:1)"))); // not leaked yet
        sites.set(9, at(Some("gone (c.c:2)"))); // no longer tracked
        let config = Arc::new(Config {
            leak_after: Duration::from_secs(10),
            ..Config::default()
        });
        let filter = Filter::with_units(config, HashMap::new());
        let leaked: u64 = table
            .summary(now, Duration::from_secs(10))
            .processes
            .values()
            .map(|s| s.leaked)
            .sum();
        assert_eq!(leaked, 4);
        let counts = count(&table, now, &filter, &sites, leaked);
        let mut got: Vec<(&str, u64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        got.sort();
        // 3 has no site, 4 no stack at all: both unknown.
        assert_eq!(
            got,
            vec![("[unknown]", 2), ("open_backend (a.c:3)", 2)],
            "{counts:?}"
        );
        // Every leaked socket has a stack: [unknown] is only the one
        // without a site, and without it there is no [unknown] series.
        let counts = count(&table, now, &filter, &sites, 3);
        assert_eq!(counts.get(UNKNOWN_SITE), Some(&1), "{counts:?}");
        table.remove(3);
        let counts = count(&table, now, &filter, &sites, 2);
        assert!(!counts.contains_key(UNKNOWN_SITE), "{counts:?}");
    }

    #[test]
    fn folds_beyond_the_top_and_keeps_the_sum() {
        let counts: HashMap<String, u64> = [
            ("open_backend_connection (leak.c:9) ← worker", 3),
            ("[unknown]", 2),
            ("b", 1),
            ("c \"quoted\"", 1),
        ]
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
        let text = render(counts, 2);
        assert!(text.contains("# TYPE cwatch_leak_site_sockets gauge"));
        assert!(text.contains(
            "cwatch_leak_site_sockets{site=\"open_backend_connection (leak.c:9) ← worker\"} 3"
        ));
        assert!(text.contains("cwatch_leak_site_sockets{site=\"[unknown]\"} 2"));
        assert!(text.contains("cwatch_leak_site_sockets{site=\"[other]\"} 2"));
        let sum: i64 = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum();
        assert_eq!(sum, 7);
    }
}
