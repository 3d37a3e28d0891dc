//! A least-recently-used cache of byte buffers bounded by bytes, not entries: tiles and
//! maps differ in size by a thousand times, so a count would bound nothing. The slide
//! reader keeps decoded tiles in one, the viewer its served tiles and maps. In:
//! buffers. Out: the buffers still held; the oldest go first when a new one would pass
//! the cap.

use std::hash::Hash;

use bytes::Bytes;
use lru::LruCache;

pub struct ByteLru<K: Hash + Eq> {
    entries: LruCache<K, Bytes>,
    bytes: usize,
    cap: usize,
}

impl<K: Hash + Eq> ByteLru<K> {
    pub fn new(cap: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            cap,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    /// Keeps `value` unless it alone is over the cap, dropping the least recently used
    /// entries until the rest fit.
    pub fn put(&mut self, key: K, value: Bytes) {
        let size = value.len();
        if size > self.cap {
            return;
        }
        if let Some(old) = self.entries.put(key, value) {
            self.bytes -= old.len();
        }
        self.bytes += size;
        while self.bytes > self.cap {
            match self.entries.pop_lru() {
                Some((_, v)) => self.bytes -= v.len(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Bytes {
        vec![0; n].into()
    }

    #[test]
    fn holds_at_most_its_cap_dropping_the_oldest() {
        let mut c = ByteLru::new(10);
        c.put("a", bytes(4));
        c.put("b", bytes(4));
        assert!(c.get(&"a").is_some()); // now b is the oldest
        c.put("c", bytes(4));
        assert!(c.get(&"b").is_none());
        assert!(c.get(&"a").is_some() && c.get(&"c").is_some());
        assert_eq!(c.bytes, 8);
        c.put("big", bytes(11));
        assert!(c.get(&"big").is_none());
        c.put("a", bytes(2));
        assert_eq!(c.bytes, 6);
    }
}
