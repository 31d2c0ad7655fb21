//! A bounded cache of records in front of SQLite, so a hot record is read without a trip
//! to the reader pool (a blocking-thread hop and a JSON parse per GET).
//!
//! The writer updates it in commit order, after the commit and before any write of the
//! batch is acknowledged, so a read after an acknowledged write always sees that write.
//! A read that misses fills the cache only if no write touched its shard between its
//! ticket (taken before the SQLite read) and the fill: a slow reader holding an older
//! row cannot put it back over a newer one. Hand-written rather than `moka`: the fill
//! check and the entry must change under one lock.
//!
//! Eviction is arbitrary within a shard (the first entry found): cheap, and fair enough
//! for a cache whose misses cost one indexed read.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use polyport_core::Record;

const SHARDS: usize = 16;

/// Hashed on every read: foldhash rather than SipHash (seeded per process, so ids a
/// client picks cannot be aimed at one bucket).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub(crate) struct RecordCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct Shard {
    /// collection → id → record.
    map: HashMap<Arc<str>, HashMap<Box<str>, Arc<Record>>>,
    len: usize,
    /// Bumped by every write to this shard: a fill with an older ticket is dropped.
    generation: u64,
}

/// Where a missed read may put what it read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    shard: usize,
    generation: u64,
}

impl RecordCache {
    /// At most `capacity` records (0: off).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: Default::default(),
        }
    }

    fn shard(&self, collection: &str, id: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        collection.hash(&mut h);
        id.hash(&mut h);
        (h.finish() as usize) % SHARDS
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    pub(crate) fn get(&self, collection: &str, id: &str) -> Option<Arc<Record>> {
        let s = self.shards[self.shard(collection, id)].lock();
        s.map.get(collection)?.get(id).cloned()
    }

    /// Taken before reading SQLite for a miss.
    pub(crate) fn ticket(&self, collection: &str, id: &str) -> Ticket {
        let shard = self.shard(collection, id);
        Ticket {
            shard,
            generation: self.shards[shard].lock().generation,
        }
    }

    /// Puts what a missed read found, unless a write touched the shard since `t`.
    pub(crate) fn fill(&self, t: Ticket, record: Arc<Record>) {
        let mut s = self.shards[t.shard].lock();
        if s.generation == t.generation {
            s.insert(record, self.per_shard);
        }
    }

    /// A committed create or update (called by the writer, in commit order).
    pub(crate) fn written(&self, record: &Record) {
        let mut s = self.shards[self.shard(&record.collection, &record.id)].lock();
        s.generation += 1;
        s.insert(Arc::new(record.clone()), self.per_shard);
    }

    /// A committed delete.
    pub(crate) fn deleted(&self, collection: &str, id: &str) {
        let mut s = self.shards[self.shard(collection, id)].lock();
        s.generation += 1;
        s.remove(collection, id);
    }

    /// A collection was replaced or dropped: forget everything (rare; the cache refills).
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            s.generation += 1;
            s.map.clear();
            s.len = 0;
        }
    }
}

impl Shard {
    fn insert(&mut self, fresh: Arc<Record>, cap: usize) {
        if cap == 0 {
            return;
        }
        let record = &*fresh;
        if let Some(ids) = self.map.get_mut(record.collection.as_str())
            && let Some(slot) = ids.get_mut(record.id.as_str())
        {
            *slot = fresh;
            return;
        }
        if self.len >= cap {
            self.evict_one();
        }
        self.map
            .entry(Arc::from(record.collection.as_str()))
            .or_default()
            .insert(record.id.as_str().into(), fresh);
        self.len += 1;
    }

    fn remove(&mut self, collection: &str, id: &str) {
        if let Some(ids) = self.map.get_mut(collection)
            && ids.remove(id).is_some()
        {
            self.len -= 1;
            if ids.is_empty() {
                self.map.remove(collection);
            }
        }
    }

    fn evict_one(&mut self) {
        let Some((c, ids)) = self.map.iter_mut().next() else {
            return;
        };
        let c = c.clone();
        if let Some(id) = ids.keys().next().cloned() {
            ids.remove(&id);
            self.len -= 1;
        }
        if ids.is_empty() {
            self.map.remove(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(c: &str, id: &str, version: u64) -> Record {
        Record {
            collection: c.into(),
            id: id.into(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            version,
            data: Default::default(),
        }
    }

    #[test]
    fn a_fill_after_a_write_to_its_shard_is_dropped() {
        let cache = RecordCache::new(100);
        let t = cache.ticket("posts", "a");
        // The writer commits version 2 while the reader still holds version 1.
        cache.written(&rec("posts", "a", 2));
        cache.fill(t, Arc::new(rec("posts", "a", 1)));
        assert_eq!(cache.get("posts", "a").map(|r| r.version), Some(2));
        cache.deleted("posts", "a");
        assert!(cache.get("posts", "a").is_none());
        let t = cache.ticket("posts", "a");
        cache.fill(t, Arc::new(rec("posts", "a", 3)));
        assert_eq!(cache.get("posts", "a").map(|r| r.version), Some(3));
    }

    #[test]
    fn it_stays_within_its_capacity_and_can_be_off() {
        let cache = RecordCache::new(32);
        for i in 0..1000 {
            cache.written(&rec("c", &i.to_string(), 1));
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().len).sum();
        assert!(held <= 32, "{held}");
        assert!(cache.get("c", "999").is_some(), "the newest write is held");
        let off = RecordCache::new(0);
        off.written(&rec("c", "x", 1));
        assert!(!off.enabled() && off.get("c", "x").is_none());
        cache.clear();
        assert!(cache.get("c", "999").is_none());
    }
}
