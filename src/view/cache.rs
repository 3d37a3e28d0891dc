//! A least-recently-used cache bounded by bytes, not entries: tiles and maps differ in
//! size by a thousand times, so a count would bound nothing. In: values with their
//! size. Out: the values still held; the oldest go first when a new one would pass
//! the cap.

use std::hash::Hash;
use std::sync::Arc;

use lru::LruCache;

pub struct ByteLru<K: Hash + Eq, V> {
    entries: LruCache<K, (Arc<V>, usize)>,
    bytes: usize,
    cap: usize,
}

impl<K: Hash + Eq, V> ByteLru<K, V> {
    pub fn new(cap: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            cap,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<Arc<V>> {
        self.entries.get(key).map(|(v, _)| v.clone())
    }

    /// Keeps `value` (of `size` bytes) unless it alone is over the cap, dropping the
    /// least recently used entries until the rest fit.
    pub fn put(&mut self, key: K, value: Arc<V>, size: usize) {
        if size > self.cap {
            return;
        }
        if let Some((_, old)) = self.entries.put(key, (value, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > self.cap {
            match self.entries.pop_lru() {
                Some((_, (_, n))) => self.bytes -= n,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_cap_dropping_the_oldest() {
        let mut c = ByteLru::new(10);
        c.put("a", Arc::new(()), 4);
        c.put("b", Arc::new(()), 4);
        assert!(c.get(&"a").is_some()); // now b is the oldest
        c.put("c", Arc::new(()), 4);
        assert!(c.get(&"b").is_none());
        assert!(c.get(&"a").is_some() && c.get(&"c").is_some());
        assert_eq!(c.bytes, 8);
        c.put("big", Arc::new(()), 11);
        assert!(c.get(&"big").is_none());
        c.put("a", Arc::new(()), 2);
        assert_eq!(c.bytes, 6);
    }
}
