/*!
A small least-recently-used map bounded by entry count and by a byte cost
per entry. Eviction scans for the oldest entry: the caches it backs hold at
most a few hundred entries, and evictions are rare next to hits.
*/
use std::{collections::HashMap, hash::Hash};

#[derive(Debug)]
pub struct Lru<K, V> {
    map: HashMap<K, (V, usize, u64)>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    pub evictions: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            map: HashMap::new(),
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
            tick: 0,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(v, _, t)| {
            *t = tick;
            &mut *v
        })
    }

    /// Inserts (replacing any entry of `key`) and returns what was evicted to
    /// make room. The new entry itself is never evicted, even when it alone
    /// is over the byte bound.
    pub fn insert(&mut self, key: K, value: V, cost: usize) -> Vec<(K, V)> {
        self.remove(&key);
        self.tick += 1;
        let mut evicted = Vec::new();
        while !self.map.is_empty()
            && (self.map.len() + 1 > self.max_entries || self.bytes + cost > self.max_bytes)
        {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, _, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(v) = self.remove(&oldest) {
                self.evictions += 1;
                evicted.push((oldest, v));
            }
        }
        self.bytes += cost;
        self.map.insert(key, (value, cost, self.tick));
        evicted
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(v, c, _)| {
            self.bytes -= c;
            v
        })
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let bytes = &mut self.bytes;
        self.map.retain(|k, (v, c, _)| {
            let kept = keep(k, v);
            if !kept {
                *bytes -= *c;
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_the_least_recently_used_by_count_and_bytes() {
        let mut lru = Lru::new(2, 100);
        assert!(lru.insert("a", 1, 10).is_empty());
        assert!(lru.insert("b", 2, 10).is_empty());
        lru.get_mut(&"a");
        assert_eq!(lru.insert("c", 3, 10), vec![("b", 2)]);
        assert_eq!(lru.len(), 2);
        // Over the byte bound: both older entries go, the new one stays.
        let evicted = lru.insert("d", 4, 95);
        assert_eq!(evicted.len(), 2);
        assert_eq!((lru.len(), lru.bytes()), (1, 95));
        lru.retain(|_, v| *v != 4);
        assert_eq!((lru.len(), lru.bytes(), lru.evictions), (0, 0, 3));
    }
}
