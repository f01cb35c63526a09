//! Bounded tables whose memory follows what they hold.

use std::{hash::Hash, num::NonZeroUsize};

use lru::LruCache;

/// An LRU cache of at most `cap` entries that allocates as entries come, not for `cap` up
/// front. Most of the agent's tables hold a few hundred live sockets under a bound of tens of
/// thousands: reserved for the bound, each of their few entries sits on a cache line (and a
/// page) of its own, and every lookup misses the cache.
pub fn lru<K: Hash + Eq, V>(cap: NonZeroUsize) -> LruCache<K, V> {
    let mut cache = LruCache::unbounded();
    cache.resize(cap);
    cache
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_allocates_for_what_it_holds_and_drops_its_oldest_beyond_its_bound() {
        let mut cache = lru(NonZeroUsize::new(65_536).expect("non-zero"));
        assert_eq!(cache.cap().get(), 65_536);
        cache.put(1u64, ());
        assert_eq!(cache.len(), 1);
        let mut small = lru(NonZeroUsize::new(2).expect("non-zero"));
        small.put(1u64, ());
        small.put(2, ());
        assert_eq!(small.push(3, ()), Some((1, ())), "the oldest pushed out");
        assert_eq!(small.len(), 2);
    }
}
