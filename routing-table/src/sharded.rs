//! A persistent map keyed by strings, split into a fixed number of
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

/// An entry that carries its own key: an entity keyed by its name, or a
/// `(Name, value)` pair for indexes. Entities need not store their name a
/// second time in the map.
pub trait Keyed: Clone {
    fn key(&self) -> &str;
}

impl<V: Clone> Keyed for (Name, V) {
    fn key(&self) -> &str {
        &self.0
    }
}

/// Something with a name, stored in a map as `Arc<Self>`. The name is the
/// shared `Name`, so keys can be handed out without copying the string.
pub trait Named {
    fn name(&self) -> &Name;
}

impl<T: Named> Keyed for Arc<T> {
    fn key(&self) -> &str {
        (**self).name()
    }
}

type Shard<E> = HashTable<E>;

/// Copy-on-write sharded hash map of [`Keyed`] entries. `Clone` is O(1).
#[derive(Clone)]
pub struct ShardedMap<E> {
    shards: Arc<Vec<Arc<Shard<E>>>>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<E: Keyed> Default for ShardedMap<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Keyed> ShardedMap<E> {
    pub fn new() -> Self {
        // Every slot starts as the same empty shard: an empty table costs
        // one allocation per map, not one per shard.
        let empty = Arc::new(HashTable::new());
        Self { shards: Arc::new(vec![empty; SHARDS]), len: 0, hasher: foldhash::fast::RandomState::default() }
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
    pub fn get(&self, key: &str) -> Option<&E> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |e| e.key() == key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn shard_mut(&mut self, shard: usize) -> &mut Shard<E> {
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[shard])
    }

    /// Inserts or replaces the entry with the same key; returns the old one.
    pub fn insert(&mut self, entry: E) -> Option<E> {
        let (hash, shard) = self.locate(entry.key());
        let hasher = self.hasher.clone();
        let table = self.shard_mut(shard);
        match table.find_mut(hash, |e| e.key() == entry.key()) {
            Some(slot) => Some(std::mem::replace(slot, entry)),
            None => {
                table.insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the entry for `key` and returns it.
    pub fn remove(&mut self, key: &str) -> Option<E> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |e| e.key() == key)?; // do not clone a shard for nothing
        let table = self.shard_mut(shard);
        let (entry, _) = table.find_entry(hash, |e| e.key() == key).ok()?.remove();
        self.len -= 1;
        Some(entry)
    }

    /// A mutable reference, cloning the shard if it is shared. Changing the
    /// entry's key through it is a bug.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut E> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |e| e.key() == key)?;
        self.shard_mut(shard).find_mut(hash, |e| e.key() == key)
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &E> {
        self.shards.iter().flat_map(|s| s.iter())
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
                    0 => prop_assert_eq!(map.insert((key.clone(), value)).map(|e| e.1), model.insert(key, value)),
                    1 => prop_assert_eq!(map.remove(&key).map(|e| e.1), model.remove(&key)),
                    _ => snapshots.push((map.clone(), model.clone())),
                }
                prop_assert_eq!(map.len(), model.len());
            }
            // Earlier clones never see later changes.
            for (snap, model) in snapshots {
                let mut got: Vec<_> = snap.iter().cloned().collect();
                got.sort();
                let want: Vec<_> = model.into_iter().collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn get_mut_does_not_leak_into_clones() {
        let mut a = ShardedMap::new();
        a.insert((Name::from("x"), 1));
        let b = a.clone();
        a.get_mut("x").unwrap().1 = 2;
        assert_eq!(a.get("x").map(|e| e.1), Some(2));
        assert_eq!(b.get("x").map(|e| e.1), Some(1));
        assert!(a.get_mut("y").is_none());
    }
}
