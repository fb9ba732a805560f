//! The cache's storage: responses held in memory, in shards of maps keyed
//! by the URL's hash, each URL with its variants (Vary). Pingora's cache
//! machinery drives it (lookup, fill, revalidation); its LRU eviction
//! manager counts the bytes and tells it what to drop, so memory stays
//! within the configured size. Pingora's own `MemCache` is for tests only
//! (no bound, copies bodies, panics on a missing entry).

use std::any::Any;
use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheEntryKeyRef, CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::Result;

const SHARDS: usize = 32;

/// One stored response.
struct Entry {
    /// The internal part of the serialized [`CacheMeta`] (freshness,
    /// variance; small, uncompressed).
    internal: Vec<u8>,
    /// The response header, kept decoded: Pingora serializes it with zstd,
    /// and decompressing it on every hit took 11% of the CPU of serving
    /// hits in a profile.
    header: ResponseHeader,
    body: Bytes,
    /// The key's site (the cache key's user tag), for purging a site.
    key: CompactCacheKey,
}

impl Entry {
    /// An entry for `meta`, its body still to come.
    fn new(meta: &CacheMeta, key: CompactCacheKey) -> Result<Entry> {
        Ok(Entry { internal: internal_part(meta)?, header: meta.response_header_copy(), body: Bytes::new(), key })
    }

    fn weight(&self) -> usize {
        let header: usize = self.header.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        self.internal.len() + header + 64 + self.body.len()
    }

    /// The stored meta: the internal part deserialized, over a header
    /// serialized once for all (tiny, so cheap to decode), then replaced
    /// by a copy of the stored header.
    fn meta(&self) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&self.internal, empty_header()?)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }

    fn set_meta(&mut self, meta: &CacheMeta) -> Result<()> {
        self.internal = internal_part(meta)?;
        self.header = meta.response_header_copy();
        Ok(())
    }
}

/// The internal part of a meta's serialization. Pingora serializes both
/// parts together; the header part (zstd) is dropped, so this costs one
/// compression per fill or update, never per hit.
fn internal_part(meta: &CacheMeta) -> Result<Vec<u8>> {
    Ok(meta.serialize()?.0)
}

/// A serialized empty `200` header, made once.
fn empty_header() -> Result<&'static [u8]> {
    static EMPTY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(e) = EMPTY.get() {
        return Ok(e);
    }
    let now = SystemTime::now();
    let meta = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, Some(0))?);
    Ok(EMPTY.get_or_init(|| meta.serialize().map(|m| m.1).unwrap_or_default()))
}

/// A URL's variants: `None` is the entry stored without variance.
type Variants = Vec<(Option<HashBinary>, Entry)>;

pub struct MemStore {
    shards: Box<[Mutex<HashMap<HashBinary, Variants>>]>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }
}

impl MemStore {
    fn shard(&self, primary: &HashBinary) -> &Mutex<HashMap<HashBinary, Variants>> {
        &self.shards[primary[0] as usize % SHARDS]
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, usize) {
        let mut entries = 0;
        let mut bytes = 0;
        for shard in self.shards.iter() {
            for variants in shard.lock().values() {
                entries += variants.len();
                bytes += variants.iter().map(|(_, e)| e.weight()).sum::<usize>();
            }
        }
        (entries, bytes)
    }

    /// Drops every variant of one URL; returns how many.
    pub fn purge_primary(&self, primary: &HashBinary, eviction: &dyn EvictionManager) -> usize {
        let removed = self.shard(primary).lock().remove(primary).unwrap_or_default();
        for (_, e) in &removed {
            eviction.remove(CacheEntryKeyRef::from_entry_id(&e.key, None));
        }
        removed.len()
    }

    /// Drops every entry of a site (the keys' user tag); returns how many.
    pub fn purge_tag(&self, tag: &str, eviction: &dyn EvictionManager) -> usize {
        let mut count = 0;
        for shard in self.shards.iter() {
            let mut removed = Vec::new();
            shard.lock().retain(|_, variants| {
                variants.retain_mut(|(_, e)| {
                    if &*e.key.user_tag == tag {
                        removed.push(e.key.clone());
                        false
                    } else {
                        true
                    }
                });
                !variants.is_empty()
            });
            for key in &removed {
                eviction.remove(CacheEntryKeyRef::from_entry_id(key, None));
            }
            count += removed.len();
        }
        count
    }

    fn with_entry<T>(&self, key: &impl CacheHashKey, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.shard(&primary).lock();
        let variants = shard.get_mut(&primary)?;
        variants.iter_mut().find(|(v, _)| *v == variance).map(|(_, e)| f(e))
    }

    fn insert(&self, entry: Entry) {
        let primary = entry.key.primary_bin();
        let variance = entry.key.variance_bin();
        let mut shard = self.shard(&primary).lock();
        let variants = shard.entry(primary).or_default();
        match variants.iter_mut().find(|(v, _)| *v == variance) {
            Some((_, old)) => *old = entry,
            None => variants.push((variance, entry)),
        }
    }

    fn remove(&self, key: &impl CacheHashKey) -> bool {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.shard(&primary).lock();
        let Some(variants) = shard.get_mut(&primary) else { return false };
        let before = variants.len();
        variants.retain(|(v, _)| *v != variance);
        let removed = variants.len() < before;
        if variants.is_empty() {
            shard.remove(&primary);
        }
        removed
    }
}

/// A hit: the whole body, in one piece (it is already in memory).
struct Hit {
    body: Bytes,
    range: (usize, usize),
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return pingora::Error::e_explain(pingora::ErrorType::InternalError, "seek past the end of the body");
        }
        self.range = (start, end.map_or(self.body.len(), |e| e.min(self.body.len())));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill: the body is gathered, and the entry stored whole on `finish`
/// (a fill that fails or is dropped stores nothing).
struct Fill {
    store: &'static MemStore,
    entry: Entry,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let mut entry = self.entry;
        entry.body = self.body.freeze();
        let weight = entry.weight();
        self.store.insert(entry);
        Ok(MissFinishType::Created(weight))
    }
}

#[async_trait]
impl Storage for MemStore {
    async fn lookup(&'static self, key: &CacheKey, _trace: &SpanHandle) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(found) = self.with_entry(key, |e| e.meta().map(|m| (m, e.body.clone()))) else {
            return Ok(None);
        };
        let (meta, body) = found?;
        let range = (0, body.len());
        Ok(Some((meta, Box::new(Hit { body, range, done: false }))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let entry = Entry::new(meta, key.to_compact())?;
        Ok(Box::new(Fill { store: self, entry, body: BytesMut::new() }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(if self.remove(target.key()) { PurgeOutcome::Purged(None) } else { PurgeOutcome::NotFound })
    }

    async fn expire(&'static self, target: PurgeTarget<'_>, _trace: &SpanHandle) -> Result<PurgeOutcome> {
        let done = self.with_entry(target.key(), |e| -> Result<()> {
            let mut meta = e.meta()?;
            meta.expire_at(SystemTime::now());
            e.set_meta(&meta)
        });
        match done {
            Some(r) => r.map(|()| PurgeOutcome::Expired),
            None => Ok(PurgeOutcome::NotFound),
        }
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<bool> {
        match self.with_entry(key, |e| e.set_meta(meta)) {
            Some(r) => r.map(|()| true),
            None => Ok(false),
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
