/*!
Leak provenance as data: for each tracked socket whose connect-time stack
was looked at, where it was opened ([`Provenance`]: the `site` string and
the symbolized stack), interned so that the thousand sockets one function
leaked share one record; and the count of leaked sockets per site with the
top N kept and the rest folded into `[other]`. Pure data, no I/O: the
provenance task (`crate::provenance`) fills it, the API, `cwatch ls` and
/metrics read it.
*/
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

/// Where a socket was opened: what its connect-time stack says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// The first frames outside libc and the runtimes (`cwatch_stacks::site`).
    pub site: Option<String>,
    pub stack: cwatch_stacks::Stack,
}

/// The site label of sockets without a known site.
pub const UNKNOWN_SITE: &str = "[unknown]";
/// The site label the sites past the top N fold into.
pub const OTHER_SITE: &str = "[other]";

/// Provenance by socket cookie, only for sockets that have one.
#[derive(Debug, Default)]
pub struct Sites {
    inner: RwLock<HashMap<u64, Arc<Provenance>>>,
}

impl Sites {
    pub fn new() -> Self {
        Self::default()
    }

    /// The provenance of `cookie`, if one is known.
    pub fn get(&self, cookie: u64) -> Option<Arc<Provenance>> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(&cookie).cloned()
    }

    pub fn set(&self, cookie: u64, provenance: Arc<Provenance>) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.insert(cookie, provenance);
    }

    /// Keeps only the cookies `live` says are still tracked.
    pub fn retain(&self, mut live: impl FnMut(u64) -> bool) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|c, _| live(*c));
        if map.capacity() > 1024 && map.capacity() > 4 * map.len() {
            let keep = 2 * map.len();
            map.shrink_to(keep);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many of `cookies` have each site label ([`UNKNOWN_SITE`]: none),
    /// under one read of the map.
    pub fn count(&self, cookies: impl Iterator<Item = u64>) -> HashMap<String, u64> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut by: HashMap<&str, u64> = HashMap::new();
        for cookie in cookies {
            let label = map
                .get(&cookie)
                .and_then(|p| p.site.as_deref())
                .unwrap_or(UNKNOWN_SITE);
            *by.entry(label).or_default() += 1;
        }
        by.into_iter().map(|(s, n)| (s.to_string(), n)).collect()
    }

    /// How many of the cookies with a provenance `keep` keeps have each
    /// site label ([`UNKNOWN_SITE`]: a stack without a site), under one
    /// read of the map: the cost is the map's size, not the table's.
    pub fn count_where(&self, mut keep: impl FnMut(u64) -> bool) -> HashMap<String, u64> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut by: HashMap<&str, u64> = HashMap::new();
        for (cookie, p) in map.iter() {
            if keep(*cookie) {
                *by.entry(p.site.as_deref().unwrap_or(UNKNOWN_SITE))
                    .or_default() += 1;
            }
        }
        by.into_iter().map(|(s, n)| (s.to_string(), n)).collect()
    }

    /// The site label of `cookie`: its site, or [`UNKNOWN_SITE`].
    pub fn label(&self, cookie: u64) -> String {
        self.get(cookie)
            .and_then(|p| p.site.clone())
            .unwrap_or_else(|| UNKNOWN_SITE.to_string())
    }
}

/// Counts per site label, the `top` largest kept (ties by label) and the
/// rest summed into [`OTHER_SITE`]; `top` 0 keeps every site. The sum of
/// the counts is unchanged.
pub fn top_sites(counts: HashMap<String, u64>, top: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = counts.into_iter().collect();
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if top == 0 || all.len() <= top {
        return all;
    }
    let rest: u64 = all[top..].iter().map(|(_, n)| n).sum();
    all.truncate(top);
    all.push((OTHER_SITE.to_string(), rest));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_sites_keep_the_sum() {
        let counts: HashMap<String, u64> = [("a", 5), ("b", 1), ("c", 3), ("d", 1)]
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        let top = top_sites(counts.clone(), 2);
        assert_eq!(
            top,
            vec![("a".into(), 5), ("c".into(), 3), (OTHER_SITE.into(), 2)]
        );
        assert_eq!(top.iter().map(|(_, n)| n).sum::<u64>(), 10);
        assert_eq!(top_sites(counts.clone(), 0).len(), 4);
        assert_eq!(top_sites(counts, 4).len(), 4);
    }

    #[test]
    fn sockets_without_provenance_are_unknown() {
        let sites = Sites::new();
        let p = Arc::new(Provenance {
            site: Some("open (a.c:3) ← main".into()),
            stack: cwatch_stacks::Stack::default(),
        });
        sites.set(2, Arc::clone(&p));
        sites.set(4, p);
        assert!(sites.get(1).is_none());
        assert_eq!(sites.label(1), UNKNOWN_SITE);
        assert_eq!(sites.label(2), "open (a.c:3) ← main");
        let counts = sites.count([1, 2, 3, 4].into_iter());
        assert_eq!(counts[UNKNOWN_SITE], 2);
        assert_eq!(counts["open (a.c:3) ← main"], 2);
        sites.retain(|c| c == 2);
        assert_eq!(sites.len(), 1);
    }
}
