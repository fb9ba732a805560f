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
    /// Freshness and variance: what a hit needs besides the header.
    meta: StoredMeta,
    /// What a fresh hit written by edge needs of the meta, when it has no
    /// variance ([`MemStore::fresh`]).
    plain: Option<Plain>,
    /// The response header, kept decoded: Pingora serializes it with zstd,
    /// and decompressing it on every hit took 11% of the CPU of serving
    /// hits in a profile.
    header: ResponseHeader,
    body: Bytes,
    /// The key's site (the cache key's user tag), for purging a site.
    key: CompactCacheKey,
}

/// The part of a [`CacheMeta`] other than its header.
enum StoredMeta {
    /// As fields, when they remake the meta exactly (a response never
    /// revalidated): nothing to decode on a hit, nothing encoded on a fill.
    Fields(MetaFields),
    /// Else the internal part of Pingora's serialization (small,
    /// uncompressed), decoded on each hit.
    Encoded(Vec<u8>),
}

impl StoredMeta {
    fn of(meta: &CacheMeta) -> Result<StoredMeta> {
        Ok(match MetaFields::of(meta) {
            Some(fields) => StoredMeta::Fields(fields),
            None => StoredMeta::Encoded(internal_part(meta)?),
        })
    }

    fn len(&self) -> usize {
        match self {
            StoredMeta::Fields(_) => std::mem::size_of::<MetaFields>(),
            StoredMeta::Encoded(internal) => internal.len(),
        }
    }
}

/// The times of a meta without variance: until when it is fresh, and
/// where its `Age` counts from (Pingora's `CacheMeta::epoch`: the epoch
/// override, else the last update).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plain {
    fresh_until: SystemTime,
    epoch: SystemTime,
}

impl Plain {
    fn of(meta: &CacheMeta) -> Option<Plain> {
        meta.variance().is_none().then(|| Plain { fresh_until: meta.fresh_until(), epoch: meta.epoch() })
    }
}

/// What [`CacheMeta::new`] and its setters need to remake a meta.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MetaFields {
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
}

impl MetaFields {
    /// `None` when `CacheMeta::new` cannot remake `meta`: it sets
    /// `updated` and the provenance to `created`, and a revalidated meta
    /// has a later `updated`.
    fn of(meta: &CacheMeta) -> Option<MetaFields> {
        (meta.updated() == meta.created() && meta.provenance() == meta.created()).then(|| MetaFields {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        })
    }

    fn meta(&self, header: ResponseHeader) -> CacheMeta {
        let (swr, sie) = (self.stale_while_revalidate_sec, self.stale_if_error_sec);
        let mut meta = CacheMeta::new(self.fresh_until, self.created, swr, sie, header);
        if let Some(variance) = self.variance {
            meta.set_variance_key(variance);
        }
        if let Some(epoch) = self.epoch_override {
            meta.set_epoch_override(epoch);
        }
        meta
    }
}

impl Entry {
    /// An entry for `meta`, its body still to come.
    fn new(meta: &CacheMeta, key: CompactCacheKey) -> Result<Entry> {
        Ok(Entry {
            meta: StoredMeta::of(meta)?,
            plain: Plain::of(meta),
            header: without_case(meta.response_header())?,
            body: Bytes::new(),
            key,
        })
    }

    fn weight(&self) -> usize {
        let header: usize = self.header.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        self.meta.len() + header + 64 + self.body.len()
    }

    /// The stored meta: remade from its fields, else the internal part
    /// deserialized over a header serialized once for all (tiny, so cheap
    /// to decode); either way with a copy of the stored header.
    fn meta(&self) -> Result<CacheMeta> {
        match &self.meta {
            StoredMeta::Fields(fields) => Ok(fields.meta(self.header.clone())),
            StoredMeta::Encoded(internal) => {
                let mut meta = CacheMeta::deserialize(internal, empty_header()?)?;
                *meta.response_header_mut() = self.header.clone();
                Ok(meta)
            }
        }
    }

    fn set_meta(&mut self, meta: &CacheMeta) -> Result<()> {
        self.meta = StoredMeta::of(meta)?;
        self.plain = Plain::of(meta);
        self.header = without_case(meta.response_header())?;
        Ok(())
    }
}

/// A stored header keeps no record of its names' case (HTTP/1.1 names
/// are case-insensitive, HTTP/2's are lower case): each hit copies the
/// header, and the case map doubled the copy. HTTP/1.1 hits name the common
/// headers in Pingora's title case and the rest in lower case.
fn without_case(header: &ResponseHeader) -> Result<ResponseHeader> {
    let mut out = ResponseHeader::build_no_case(header.status, Some(header.headers.len()))?;
    out.set_version(header.version);
    out.set_reason_phrase(header.get_reason_phrase())?;
    for (name, value) in &header.headers {
        out.append_header(name.clone(), value.clone())?;
    }
    Ok(out)
}

/// The internal part of a meta's serialization. Pingora serializes both
/// parts together; the header part (zstd) is dropped, so this costs one
/// compression per update of a revalidated meta, never per hit.
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

/// A stored response that a request can be answered with as it is: see
/// [`MemStore::fresh`].
pub struct Fresh {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Where its `Age` counts from: when it was stored or last
    /// revalidated (or the origin's epoch override).
    pub epoch: SystemTime,
    pub fresh_until: SystemTime,
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

    /// The URL's response stored without variance, if it is fresh at
    /// `now`: one Pingora's hit path would serve as stored. A variant is
    /// `None` (Pingora picks it by the request's headers), and so is a
    /// stale or absent one: the request then goes through Pingora's cache
    /// machinery, which handles every case.
    pub fn fresh(&self, primary: &HashBinary, now: SystemTime) -> Option<Fresh> {
        let shard = self.shard(primary).lock();
        let (_, entry) = shard.get(primary)?.iter().find(|(v, _)| v.is_none())?;
        let plain = entry.plain?;
        // Pingora's `is_fresh`: fresh up to and including `fresh_until`.
        (plain.fresh_until >= now).then(|| Fresh {
            header: entry.header.clone(),
            body: entry.body.clone(),
            epoch: plain.epoch,
            fresh_until: plain.fresh_until,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header() -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h
    }

    #[test]
    fn a_meta_remade_from_its_fields_serializes_as_the_original() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut meta = CacheMeta::new(now + Duration::from_secs(60), now, 30, 3600, header());
        meta.set_variance_key(*b"0123456789abcdef");
        meta.set_epoch_override(now + Duration::from_secs(5));
        let fields = MetaFields::of(&meta).expect("a new meta has fields");
        let remade = fields.meta(header());
        assert_eq!(remade.serialize().unwrap(), meta.serialize().unwrap());

        let plain = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header());
        let remade = MetaFields::of(&plain).unwrap().meta(header());
        assert_eq!(remade.serialize().unwrap(), plain.serialize().unwrap());
    }

    #[test]
    fn a_stored_header_drops_the_names_case_and_keeps_the_rest() {
        let mut h = ResponseHeader::build(203, None).unwrap();
        h.set_reason_phrase(Some("Rewritten")).unwrap();
        h.append_header("X-Twice", "1").unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("x-twice", "2").unwrap();
        let out = without_case(&h).unwrap();
        assert!(!out.has_case());
        assert_eq!((out.status.as_u16(), out.get_reason_phrase()), (203, Some("Rewritten")));
        let twice: Vec<_> = out.headers.get_all("x-twice").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(twice, ["1", "2"]);
        assert_eq!(out.headers.get("content-type").unwrap(), "text/plain");
        assert_eq!(out.headers.len(), 3);
    }

    #[test]
    fn only_fresh_entries_without_variance_are_fresh() {
        let store = MemStore::default();
        let now = SystemTime::now();
        let secs = Duration::from_secs;
        let put = |path: &str, meta: &CacheMeta, variance: Option<HashBinary>| {
            let mut key = crate::http::cache::key("site", "h", path);
            if let Some(v) = variance {
                key.set_variance_key(v);
            }
            let mut entry = Entry::new(meta, key.to_compact()).unwrap();
            entry.body = Bytes::from_static(b"body");
            store.insert(entry);
        };
        let fresh = |path: &str| store.fresh(&crate::http::cache::key("site", "h", path).primary_bin(), now);
        let plain = || CacheMeta::new(now + secs(60), now - secs(5), 0, 0, header());
        put("/plain", &plain(), None);
        let hit = fresh("/plain").expect("a fresh plain entry");
        assert_eq!((&hit.body[..], hit.epoch, hit.fresh_until), (&b"body"[..], now - secs(5), now + secs(60)));
        assert_eq!(hit.header.headers.get("content-type").unwrap(), "text/plain");
        // Fresh up to and including its last second, as Pingora's `is_fresh`.
        put("/edge", &CacheMeta::new(now, now - secs(5), 0, 0, header()), None);
        assert!(fresh("/edge").is_some());
        put("/stale", &CacheMeta::new(now - secs(1), now - secs(60), 0, 0, header()), None);
        assert!(fresh("/stale").is_none(), "stale: Pingora serves it stale or revalidates");
        let mut varied = plain();
        varied.set_variance_key(*b"0123456789abcdef");
        put("/varied", &varied, Some(*b"0123456789abcdef"));
        assert!(fresh("/varied").is_none(), "a variant: Pingora picks it by the request");
        let mut epoch = plain();
        epoch.set_epoch_override(now - secs(1));
        put("/epoch", &epoch, None);
        assert_eq!(fresh("/epoch").map(|h| h.epoch), Some(now - secs(1)), "Age counts from the override");
        let mut revalidated = CacheMeta::new(now - secs(1), now - secs(60), 0, 0, header());
        revalidated.update_freshness(now + secs(60), 0, 0);
        put("/revalidated", &revalidated, None);
        let hit = fresh("/revalidated").expect("fresh again after its revalidation");
        assert_eq!((hit.epoch, hit.fresh_until), (revalidated.updated(), now + secs(60)), "Age counts from then");
        // Expired in place (as a purge of type expire does): stale from then.
        store.with_entry(&crate::http::cache::key("site", "h", "/plain"), |e| {
            let mut meta = e.meta().unwrap();
            meta.expire_at(now - secs(1));
            e.set_meta(&meta).unwrap();
        });
        assert!(fresh("/plain").is_none());
        assert!(fresh("/absent").is_none());
    }

    #[test]
    fn a_revalidated_meta_is_decoded_not_remade() {
        let past = SystemTime::now() - Duration::from_secs(600);
        let mut meta = CacheMeta::new(past + Duration::from_secs(60), past, 0, 0, header());
        meta.update_freshness(SystemTime::now() + Duration::from_secs(60), 0, 0);
        assert!(MetaFields::of(&meta).is_none());
        let key = CacheKey::new("h\n/p", "site").to_compact();
        let entry = Entry::new(&meta, key).unwrap();
        assert!(matches!(entry.meta, StoredMeta::Encoded(_)));
        let back = entry.meta().unwrap();
        assert_eq!(back.serialize().unwrap(), meta.serialize().unwrap());
        assert_eq!(back.updated(), meta.updated());
    }
}
