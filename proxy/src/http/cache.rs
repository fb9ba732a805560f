//! The HTTP cache: Pingora's cache machinery (lookup, fill, revalidation,
//! the cache lock that coalesces requests for one URL, serving stale) over
//! [`store::MemStore`], bounded in bytes by Pingora's LRU eviction manager.
//!
//! This file holds the policy, as pure functions: the cache key (site, host
//! and path: never the backend, so a move keeps the cache), which responses
//! are stored and for how long (RFC 9111), the variance of `Vary`, and the
//! `Cache-Status` header (RFC 9211).

pub mod store;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pingora::cache::cache_control::{CacheControl, Cacheable as CcCacheable, InterpretCacheControl};
use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::EvictionManager;
use pingora::cache::filters::calculate_fresh_until;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::VarianceBuilder;
use pingora::cache::{CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Serialize;

use store::MemStore;

/// Shards of the LRU.
const LRU_SHARDS: usize = 16;

/// Shards of the predictor, and URLs each remembers as not cacheable
/// (16 × 4096: 65,536 URLs, about 3 MiB; the least recently marked go
/// first).
const PREDICTOR_SHARDS: usize = 16;
const PREDICTOR_PER_SHARD: usize = 4096;

/// Why a response to a request with `Authorization` is not stored: the
/// reason the predictor does not remember, so the URL's anonymous requests
/// still look in the cache.
pub const AUTHORIZATION: NoCacheReason = NoCacheReason::Custom(AUTHORIZATION_TAG);
const AUTHORIZATION_TAG: &str = "authorization";

/// Heuristic freshness is at most this long (RFC 9111 §4.2.2 suggests 10%
/// of the time since Last-Modified; caches commonly cap it).
const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 3600);

/// How long a stored response is kept past its freshness for serving stale
/// when the origin's own `stale-while-revalidate` / `stale-if-error` do not
/// say: only a site `under_attack` uses it ([`stale_allowed`]).
pub const UNDER_ATTACK_STALE: Duration = Duration::from_secs(24 * 3600);

/// No freshness unless the response or the site's policy gives one.
const NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// The cache shared by every request. Pingora wants `'static` parts: they
/// are made once per process.
pub struct Cache {
    pub store: &'static MemStore,
    pub eviction: &'static Manager<LRU_SHARDS>,
    pub lock: &'static CacheKeyLockImpl,
    /// Remembers URLs whose last response could not be stored. Their next
    /// requests skip the lookup and the cache lock and go straight to the
    /// backend, as they would have after waiting: without it, concurrent
    /// requests for one uncacheable URL queue on the lock behind each other
    /// (one fetch at a time). A bypassed request whose response turns out
    /// storable is stored, and the URL forgotten (Pingora's proxy does both).
    pub predictor: &'static Predictor<PREDICTOR_SHARDS>,
    /// Larger responses are not stored, so one big file cannot flush the
    /// cache.
    pub max_object: usize,
    capacity: usize,
}

/// What `GET /v1/cache` reports.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub entries: usize,
    pub bytes: usize,
    pub capacity_bytes: usize,
    pub max_object_bytes: usize,
    pub evicted_entries: usize,
    pub evicted_bytes: usize,
}

impl Cache {
    pub fn new(capacity: usize, max_object: usize, lock_timeout: Duration) -> Arc<Cache> {
        let per_shard = (capacity / LRU_SHARDS / 4096).clamp(16, 65_536);
        Arc::new(Cache {
            store: Box::leak(Box::default()),
            eviction: Box::leak(Box::new(Manager::with_capacity(capacity, per_shard))),
            lock: Box::leak(CacheLock::new_boxed(lock_timeout)),
            predictor: Box::leak(Box::new(Predictor::new(PREDICTOR_PER_SHARD, Some(|r| r == AUTHORIZATION_TAG)))),
            max_object,
            capacity,
        })
    }

    pub fn stats(&self) -> Stats {
        let (entries, bytes) = self.store.usage();
        Stats {
            entries,
            bytes,
            capacity_bytes: self.capacity,
            max_object_bytes: self.max_object,
            evicted_entries: self.eviction.evicted_items(),
            evicted_bytes: self.eviction.evicted_size(),
        }
    }

    /// A fresh stored response for `key` (see [`store::MemStore::fresh`]),
    /// its use recorded with the eviction manager as Pingora records a
    /// hit's.
    pub fn fresh(&self, key: &CacheKey, now: SystemTime) -> Option<store::Fresh> {
        let hit = self.store.fresh(&key.primary_bin(), now)?;
        let entry = pingora::cache::CacheEntryKey::from_entry_id(key.to_compact(), None);
        self.eviction.access(&entry, hit.body.len(), hit.fresh_until);
        Some(hit)
    }

    /// Drops every cached response of a site; returns how many.
    pub fn purge_site(&self, site: &str) -> usize {
        self.store.purge_tag(site, self.eviction)
    }

    /// Drops every variant of one URL (host and path with query) of a site.
    pub fn purge_url(&self, site: &str, host: &str, path_and_query: &str) -> usize {
        let primary: HashBinary = key(site, host, path_and_query).primary_bin();
        self.store.purge_primary(&primary, self.eviction)
    }
}

/// The cache key: the host (lower case, no port) and the path with its
/// query, framed by a newline (which neither can hold); the site is the
/// user tag, for purging a whole site. The backend is not in it.
pub fn key(site: &str, host: &str, path_and_query: &str) -> CacheKey {
    let mut primary = Vec::with_capacity(host.len() + 1 + path_and_query.len());
    primary.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
    primary.push(b'\n');
    primary.extend_from_slice(path_and_query.as_bytes());
    // The same hash Pingora computes, once: it asks for it several times a
    // request (lookup, lock, eviction, predictor).
    let hash = pingora::cache::key::hash_key(&primary);
    let mut key = CacheKey::new(primary, site);
    key.set_primary_bin_override(hash);
    key
}

/// Whether a request can take a fresh stored response without Pingora's
/// cache machinery ([`Cache::fresh`]): a `GET` or `HEAD` without `Range`
/// (a range needs Pingora's body filter). Conditions are answered as
/// Pingora's hit path answers them, by the same filter. The caller also
/// checks that it has no body and asks for no upgrade.
pub fn plain_read(req: &RequestHeader) -> bool {
    read_method(&req.method) && !req.headers.contains_key(http::header::RANGE)
}

/// The methods whose answers the cache stores and serves: `GET` and `HEAD`.
pub fn read_method(method: &http::Method) -> bool {
    method == http::Method::GET || method == http::Method::HEAD
}

/// A stored header made into a hit's as Pingora's hit path makes it (its
/// `cache_hit_header` is private): `Age` (RFC 9111 §4), HTTP/1.1, chunked
/// framing when it has no `Content-Length`.
pub fn hit_header(mut header: ResponseHeader, epoch: SystemTime, now: SystemTime) -> pingora::Result<ResponseHeader> {
    let age = now.duration_since(epoch).unwrap_or_default().as_secs();
    header.insert_header(http::header::AGE, age)?;
    header.set_version(http::Version::HTTP_11);
    let no_body = matches!(header.status.as_u16(), 204 | 304) || header.status.is_informational();
    if !no_body && !header.headers.contains_key(http::header::CONTENT_LENGTH) {
        header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(header)
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Whether (and until when) a response is stored, by RFC 9111:
/// `no-store` and `private` are not; `no-cache` is stored but always
/// revalidated; `s-maxage`, then `max-age`, then `Expires` give freshness;
/// without them, the site's `default_ttl_secs` (an operator's choice, like
/// nginx's `proxy_cache_valid`) or, when it is 0, the heuristic of §4.2.2
/// (10% of the time since `Last-Modified`, at most a day) for statuses that
/// allow it. Responses that set cookies, `Vary: *`, and answers to requests
/// with `Authorization` (unless `public`, `s-maxage` or `must-revalidate`)
/// are not stored.
pub fn response_cacheable(resp: &ResponseHeader, authorization: bool, default_ttl_secs: u32) -> RespCacheable {
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let vary_star = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .any(|v| v.to_str().map_or(true, |v| v.split(',').any(|n| n.trim() == "*")));
    if vary_star {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    if says_no_store(resp) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let cc = CacheControl::from_resp_headers(resp);
    let now = SystemTime::now();
    let explicit = calculate_fresh_until(now, cc.as_ref(), resp, authorization, &NO_DEFAULTS);
    let fresh_until = match explicit {
        Some(t) => t,
        None => {
            let forbidden = cc.as_ref().is_some_and(|c| c.is_cacheable() == CcCacheable::No);
            let auth_blocks = authorization && !cc.as_ref().is_some_and(|c| c.allow_caching_authorized_req());
            if auth_blocks && !forbidden {
                return RespCacheable::Uncacheable(AUTHORIZATION);
            }
            if forbidden || !heuristically_cacheable(resp.status.as_u16()) {
                return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
            }
            match heuristic(resp, now, default_ttl_secs) {
                Some(ttl) => now + ttl,
                None => return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
            }
        }
    };
    // The stored windows are the origin's when it gave them (0 when it
    // forbids serving stale), else a day that only `under_attack` uses.
    let extended = UNDER_ATTACK_STALE.as_secs() as u32;
    let swr =
        cc.as_ref().and_then(|c| c.serve_stale_while_revalidate_duration()).map_or(extended, |d| d.as_secs() as u32);
    let sie = cc.as_ref().and_then(|c| c.serve_stale_if_error_duration()).map_or(extended, |d| d.as_secs() as u32);
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
}

/// Whether a `Cache-Control` field names `no-store` (RFC 9111 §5.2.2.5:
/// never stored, whatever else it says), found without parsing the rest:
/// the common uncacheable answer skips building the directive map. A
/// quoted value holding `, no-store` reads as the directive too, which
/// only errs towards not storing.
fn says_no_store(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(http::header::CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|directive| {
            let name = directive.split(|&b| b == b'=').next().unwrap_or(directive);
            name.trim_ascii().eq_ignore_ascii_case(b"no-store")
        })
    })
}

/// Freshness for a response without explicit freshness.
fn heuristic(resp: &ResponseHeader, now: SystemTime, default_ttl_secs: u32) -> Option<Duration> {
    if default_ttl_secs > 0 {
        return Some(Duration::from_secs(u64::from(default_ttl_secs)));
    }
    let date = |name| {
        let v = resp.headers.get(name)?.to_str().ok()?;
        httpdate::parse_http_date(v).ok()
    };
    let modified = date(http::header::LAST_MODIFIED)?;
    let reference = date(http::header::DATE).unwrap_or(now);
    let ttl = reference.duration_since(modified).ok()? / 10;
    (!ttl.is_zero()).then(|| ttl.min(MAX_HEURISTIC))
}

/// The variance of a request for a stored response with `Vary`: a hash of
/// the request's values of the named headers (`None` without `Vary`).
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut builder = VarianceBuilder::new();
    for name in names {
        let value: Vec<u8> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain([b',']))
            .collect();
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// Whether a stale stored response may be served at `now`: while
/// revalidating (`on_error` false) or because the backend failed. A cache
/// must not serve stale unless the origin allowed it (RFC 9111 §4.2.4:
/// `stale-while-revalidate`, `stale-if-error`, RFC 5861) or by an
/// out-of-band contract: here, the site being `under_attack`, within
/// [`UNDER_ATTACK_STALE`] and never against `must-revalidate`,
/// `proxy-revalidate` or `s-maxage`.
pub fn stale_allowed(meta: &CacheMeta, now: SystemTime, on_error: bool, under_attack: bool) -> bool {
    let cc = CacheControl::from_resp_headers(meta.response_header());
    let window = cc.and_then(|c| {
        if on_error {
            c.serve_stale_if_error_duration()
        } else {
            c.serve_stale_while_revalidate_duration()
        }
    });
    let window = match window {
        Some(w) => w,
        None if under_attack => UNDER_ATTACK_STALE,
        None => return false,
    };
    now <= meta.fresh_until() + window
}

/// How the cache took part in a response, for `Cache-Status`, the log and
/// the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fresh from the cache.
    Hit,
    /// Not in the cache (or not usable): from the backend.
    Miss,
    /// A stale copy served (while revalidating, or because the backend
    /// failed).
    Stale,
    /// A stale copy the backend confirmed (304).
    Revalidated,
    /// Not a cacheable request, or the site's cache is off.
    Bypass,
}

impl Outcome {
    pub fn of(phase: &CachePhase) -> Outcome {
        match phase {
            CachePhase::Hit => Outcome::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => Outcome::Stale,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            CachePhase::Miss | CachePhase::Expired => Outcome::Miss,
            CachePhase::Disabled(NoCacheReason::OriginNotCache | NoCacheReason::ResponseTooLarge | AUTHORIZATION) => {
                Outcome::Miss
            }
            _ => Outcome::Bypass,
        }
    }

    /// Its index in the metrics' `result` labels.
    pub fn index(self) -> usize {
        match self {
            Outcome::Hit => 0,
            Outcome::Miss => 1,
            Outcome::Stale => 2,
            Outcome::Revalidated => 3,
            Outcome::Bypass => 4,
        }
    }

    pub fn label(self) -> &'static str {
        super::metrics::CACHE_RESULTS[self.index()]
    }
}

/// The `Cache-Status` value (RFC 9211) for a response. `ttl` is the
/// remaining freshness of a stored response (negative when stale);
/// `stored` whether this response was written to the cache. Without a
/// `ttl` or `stored` (every uncached response) the value is a constant.
pub fn cache_status(outcome: Outcome, ttl: Option<i64>, stored: bool) -> Cow<'static, str> {
    let stored = stored && outcome != Outcome::Hit && outcome != Outcome::Stale;
    let head = match outcome {
        Outcome::Hit | Outcome::Stale => "edge; hit",
        Outcome::Miss => "edge; fwd=uri-miss",
        Outcome::Revalidated => "edge; fwd=stale; fwd-status=304",
        Outcome::Bypass => "edge; fwd=bypass",
    };
    if ttl.is_none() && !stored {
        return Cow::Borrowed(head);
    }
    let mut s = String::with_capacity(head.len() + 24);
    s.push_str(head);
    if let Some(ttl) = ttl {
        use std::fmt::Write;
        let _ = write!(s, "; ttl={ttl}");
    }
    if stored {
        s.push_str("; stored");
    }
    Cow::Owned(s)
}

/// Remaining freshness of a stored response in seconds, negative when
/// stale.
pub fn ttl(meta: &CacheMeta, now: SystemTime) -> i64 {
    ttl_until(meta.fresh_until(), now)
}

/// Remaining freshness until `until`, as [`ttl`].
pub fn ttl_until(until: SystemTime, now: SystemTime) -> i64 {
    match until.duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fresh_secs(r: &RespCacheable) -> Option<i64> {
        match r {
            RespCacheable::Cacheable(meta) => Some(ttl(meta, SystemTime::now())),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn rfc9111_directives() {
        let c = |h: &[(&str, &str)]| fresh_secs(&response_cacheable(&resp(200, h), false, 0));
        assert!(c(&[("cache-control", "max-age=60")]).is_some_and(|t| (58..=60).contains(&t)));
        assert!(c(&[("cache-control", "max-age=60, s-maxage=600")]).is_some_and(|t| t > 500), "s-maxage wins");
        assert_eq!(c(&[("cache-control", "no-store, max-age=60")]), None);
        assert_eq!(c(&[("cache-control", "max-age=60, No-Store")]), None);
        assert_eq!(c(&[("cache-control", "max-age=60"), ("cache-control", "no-store")]), None);
        assert!(c(&[("cache-control", "max-age=60, no-storex")]).is_some(), "only the directive itself");
        assert!(c(&[("cache-control", "max-age=60, x-no-store=1")]).is_some());
        assert_eq!(c(&[("cache-control", "private, max-age=60")]), None);
        assert!(c(&[("cache-control", "no-cache")]).is_some_and(|t| t < 0), "stored, always revalidated");
        assert_eq!(c(&[]), None, "no freshness and no Last-Modified: not stored");
        assert_eq!(c(&[("set-cookie", "a=b"), ("cache-control", "max-age=60")]), None);
        assert_eq!(c(&[("vary", "*"), ("cache-control", "max-age=60")]), None);
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        assert!(c(&[("expires", &expires)]).is_some_and(|t| (100..=120).contains(&t)));
        // Heuristic: 10% of the age of Last-Modified.
        let now = SystemTime::now();
        let lm = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let date = httpdate::fmt_http_date(now);
        assert!(c(&[("last-modified", &lm), ("date", &date)]).is_some_and(|t| (98..=100).contains(&t)));
        // ...but not for a status that does not allow it.
        let r = response_cacheable(&resp(500, &[("last-modified", &lm)]), false, 0);
        assert_eq!(fresh_secs(&r), None);
        // The site's default applies without explicit freshness only.
        let r = response_cacheable(&resp(200, &[]), false, 30);
        assert!(fresh_secs(&r).is_some_and(|t| (28..=30).contains(&t)));
        let r = response_cacheable(&resp(200, &[("cache-control", "max-age=5")]), false, 30);
        assert!(fresh_secs(&r).is_some_and(|t| t <= 5));
        // Authorization: only when the origin says so.
        let r = response_cacheable(&resp(200, &[("cache-control", "max-age=60")]), true, 0);
        assert_eq!(fresh_secs(&r), None);
        let r = response_cacheable(&resp(200, &[("cache-control", "public, max-age=60")]), true, 0);
        assert!(fresh_secs(&r).is_some());
        let r = response_cacheable(&resp(200, &[]), true, 30);
        assert_eq!(fresh_secs(&r), None, "the site default does not cache authorized answers");
        assert!(matches!(r, RespCacheable::Uncacheable(AUTHORIZATION)), "{r:?}");
    }

    #[test]
    fn the_predictor_remembers_urls_not_requests_with_authorization() {
        use pingora::cache::predictor::CacheablePredictor;
        let cache = Cache::new(1 << 20, 1 << 16, Duration::from_secs(1));
        let (a, b) = (key("s", "h", "/no-store"), key("s", "h", "/private-answer"));
        cache.predictor.mark_uncacheable(&a, NoCacheReason::OriginNotCache);
        cache.predictor.mark_uncacheable(&b, AUTHORIZATION);
        assert!(!cache.predictor.cacheable_prediction(&a));
        assert!(cache.predictor.cacheable_prediction(&b));
        cache.predictor.mark_cacheable(&a);
        assert!(cache.predictor.cacheable_prediction(&a));
    }

    #[test]
    fn the_key_has_no_backend_and_frames_host_and_path() {
        let a = key("s", "Example.org", "/a?b");
        assert_eq!(a.primary_key(), b"example.org\n/a?b");
        // The hash set once is the one Pingora would compute.
        assert_eq!(a.primary_bin(), CacheKey::new(a.primary_key(), "s").primary_bin());
        assert_ne!(key("s", "example.org", "/x").primary_bin(), key("s", "example.orgx", "/").primary_bin());
    }

    #[test]
    fn variance_follows_the_named_request_headers() {
        let meta = match response_cacheable(
            &resp(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")]),
            false,
            0,
        ) {
            RespCacheable::Cacheable(m) => m,
            _ => panic!(),
        };
        let req = |ae: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            if let Some(ae) = ae {
                r.insert_header("accept-encoding", ae).unwrap();
            }
            r
        };
        let gzip = variance(&meta, &req(Some("gzip")));
        assert!(gzip.is_some());
        assert_eq!(gzip, variance(&meta, &req(Some("gzip"))));
        assert_ne!(gzip, variance(&meta, &req(Some("br"))));
        assert_ne!(gzip, variance(&meta, &req(None)));
    }

    #[test]
    fn only_reads_without_a_range_take_a_fresh_hit() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build(method, b"/a", None).unwrap();
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).unwrap();
            }
            r
        };
        assert!(plain_read(&req("GET", &[("accept", "*/*"), ("authorization", "x")])));
        assert!(plain_read(&req("HEAD", &[])));
        assert!(!plain_read(&req("POST", &[])));
        assert!(!plain_read(&req("OPTIONS", &[])));
        assert!(!plain_read(&req("GET", &[("range", "bytes=0-1")])));
        assert!(!plain_read(&req("HEAD", &[("range", "bytes=0-1")])));
        // Conditions are answered by Pingora's filter, on either path.
        for name in ["if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"] {
            assert!(plain_read(&req("GET", &[(name, "x")])), "{name}");
            assert!(plain_read(&req("HEAD", &[(name, "x")])), "{name}");
        }
    }

    #[test]
    fn a_hit_header_has_age_and_framing() {
        let now = SystemTime::now();
        let created = now - Duration::from_secs(7);
        let h = hit_header(resp(200, &[("content-length", "4")]), created, now).unwrap();
        assert_eq!(h.headers.get("age").unwrap(), "7");
        assert!(!h.headers.contains_key("transfer-encoding"));
        assert_eq!(h.version, http::Version::HTTP_11);
        let h = hit_header(resp(200, &[]), created, now).unwrap();
        assert_eq!(h.headers.get("transfer-encoding").unwrap(), "chunked", "no length: chunked, as Pingora");
        let h = hit_header(resp(204, &[]), created, now).unwrap();
        assert!(!h.headers.contains_key("transfer-encoding"), "204 has no body");
        assert_eq!(ttl_until(now + Duration::from_secs(53), now), 53);
        assert_eq!(ttl_until(now - Duration::from_millis(500), now), -1, "stale: negative");
    }

    #[test]
    fn cache_status_values() {
        assert_eq!(cache_status(Outcome::Hit, Some(30), false), "edge; hit; ttl=30");
        assert_eq!(cache_status(Outcome::Stale, Some(-3), false), "edge; hit; ttl=-3");
        assert_eq!(cache_status(Outcome::Miss, None, true), "edge; fwd=uri-miss; stored");
        assert_eq!(
            cache_status(Outcome::Revalidated, Some(60), true),
            "edge; fwd=stale; fwd-status=304; ttl=60; stored"
        );
        assert_eq!(cache_status(Outcome::Bypass, None, false), "edge; fwd=bypass");
        assert_eq!(cache_status(Outcome::Miss, None, false), "edge; fwd=uri-miss");
        assert_eq!(cache_status(Outcome::Hit, None, true), "edge; hit");
        assert_eq!(cache_status(Outcome::Miss, Some(5), true), "edge; fwd=uri-miss; ttl=5; stored");
    }
}
