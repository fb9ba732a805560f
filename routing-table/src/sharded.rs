//! A persistent map from [`Name`] to `V`, split into a fixed number of
//! shards so that a copy-on-write update clones one small shard and a
//! vector of shard pointers, never the whole map.
//!
//! With 1,000,000 entries and 1024 shards an update copies about 1,000
//! entries plus 1024 pointers (tens of microseconds), while a lookup is one
//! hash and one probe into a `hashbrown` table, as fast as a plain map.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::name::Name;

const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;

type Shard<V> = HashTable<(Name, V)>;

/// Copy-on-write sharded hash map. `Clone` is O(1).
#[derive(Clone)]
pub struct ShardedMap<V> {
    shards: Arc<Vec<Arc<Shard<V>>>>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<V: Clone> Default for ShardedMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> ShardedMap<V> {
    pub fn new() -> Self {
        // Every slot starts as the same empty shard: an empty table costs
        // one allocation per map, not one per shard.
        let empty = Arc::new(HashTable::new());
        Self {
            shards: Arc::new(vec![empty; SHARDS]),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // High bits pick the shard; hashbrown uses the low bits and the top 7.
        (hash, ((hash >> 32) as usize) & (SHARDS - 1))
    }

    /// Looks `key` up. Never allocates.
    pub fn get(&self, key: &str) -> Option<&V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |(k, _)| &**k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn shard_mut(&mut self, shard: usize) -> &mut Shard<V> {
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[shard])
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: Name, value: V) -> Option<V> {
        let (hash, shard) = self.locate(&key);
        let hasher = self.hasher.clone();
        let table = self.shard_mut(shard);
        match table.find_mut(hash, |(k, _)| *k == key) {
            Some(slot) => Some(std::mem::replace(&mut slot.1, value)),
            None => {
                table.insert_unique(hash, (key, value), |(k, _)| hasher.hash_one(&**k));
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`; returns the value it had.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let (hash, shard) = self.locate(key);
        if self.shards[shard].find(hash, |(k, _)| &**k == key).is_none() {
            return None; // do not clone a shard for nothing
        }
        let table = self.shard_mut(shard);
        let (entry, _) = table.find_entry(hash, |(k, _)| &**k == key).ok()?.remove();
        self.len -= 1;
        Some(entry.1)
    }

    /// Returns a mutable reference, cloning the shard if it is shared.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |(k, _)| &**k == key)?;
        self.shard_mut(shard).find_mut(hash, |(k, _)| &**k == key).map(|(_, v)| v)
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, &V)> {
        self.shards.iter().flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((0u8..3, 0u16..200, any::<u32>()), 0..400)) {
            let mut map = ShardedMap::new();
            let mut model = BTreeMap::new();
            let mut snapshots = Vec::new();
            for (op, key, value) in ops {
                let key: Name = format!("k{key}").into();
                match op {
                    0 => prop_assert_eq!(map.insert(key.clone(), value), model.insert(key, value)),
                    1 => prop_assert_eq!(map.remove(&key), model.remove(&key)),
                    _ => snapshots.push((map.clone(), model.clone())),
                }
                prop_assert_eq!(map.len(), model.len());
            }
            // Earlier clones never see later changes.
            for (snap, model) in snapshots {
                let mut got: Vec<_> = snap.iter().map(|(k, v)| (k.clone(), *v)).collect();
                got.sort();
                let want: Vec<_> = model.into_iter().collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn get_mut_does_not_leak_into_clones() {
        let mut a = ShardedMap::new();
        a.insert("x".into(), 1);
        let b = a.clone();
        *a.get_mut("x").unwrap() = 2;
        assert_eq!(a.get("x"), Some(&2));
        assert_eq!(b.get("x"), Some(&1));
        assert!(a.get_mut("y").is_none());
    }
}
