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
    sites::{Sites, top_sites},
    table::{SocketTable, age, is_leaked},
};

/// Leaked sockets per site label (before folding).
pub fn count(
    table: &SocketTable,
    now_ns: u64,
    filter: &Filter,
    sites: &Sites,
) -> HashMap<String, u64> {
    let leak_after = filter.leak_after();
    let leaked: Vec<u64> = if filter.is_empty() {
        table
            .keys()
            .filter(|(_, start_ns, _)| is_leaked(age(now_ns, *start_ns), leak_after))
            .map(|(cookie, _, _)| cookie)
            .collect()
    } else {
        table
            .iter()
            .filter(|e| is_leaked(age(now_ns, e.start_ns), leak_after) && filter.keeps(e))
            .map(|e| e.cookie)
            .collect()
    };
    sites.count(leaked.into_iter())
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
