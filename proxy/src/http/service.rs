//! The Pingora proxy: each request reads the table snapshot once, in
//! `request_filter`, and is answered by the edge (pages, redirects) or sent
//! to an upstream of its site, picked per attempt.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;

use super::proxy_protocol::ProxyV2Connect;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use routing_table::{Site, Snapshot, Table};

use super::cache::{self, Cache, Outcome};
use super::certs::Handshake;
use super::config::Settings;
use super::metrics::HttpMetrics;
use super::router::{self, Decision, Page, Upstream};

/// Attempts at most per request (the first and two retries on connect
/// failure, each to another backend).
const MAX_ATTEMPTS: usize = 3;

/// What every request shares.
pub struct Shared {
    pub settings: Settings,
    pub table: Table,
    pub metrics: HttpMetrics,
    pub cache: Option<Arc<Cache>>,
    pub health: Arc<super::health::Health>,
    pub limiter: super::limits::Limiter,
    pub acme: Option<Arc<super::acme::Acme>>,
}

pub struct Proxy {
    pub shared: Arc<Shared>,
}

/// Per request.
pub struct Ctx {
    started: Instant,
    site: Option<Arc<Site>>,
    /// The snapshot the request was routed by; every attempt picks from it.
    snapshot: Option<Arc<Snapshot>>,
    /// Backends tried so far, by name.
    tried: Vec<routing_table::Name>,
    upstream: Option<Upstream>,
    /// The upstream socket of the attempt in progress (HTTP/1), held by
    /// Pingora until the response is through; see [`super::quick_ack`].
    upstream_fd: Option<std::os::unix::io::RawFd>,
    /// What the edge answered itself, for the log.
    answered: Option<&'static str>,
    /// The request came over TLS.
    tls: bool,
    /// The response was written to the cache.
    stored: bool,
    /// What the cache did, once the response is on its way.
    cache: Option<Outcome>,
    /// Counts the request in flight for its client's concurrency limit.
    _in_flight: Option<pingora_limits::inflight::Guard>,
    /// Counts it at the backends of a site under attack.
    _at_backend: Option<pingora_limits::inflight::Guard>,
    /// The site's `max_body_bytes`, and the body bytes sent to this
    /// attempt's backend: counted as the body streams, for bodies of no
    /// declared length. A retry sends Pingora's buffered copy again, so
    /// each attempt counts from 0.
    body_limit: u64,
    body_sent: u64,
    /// The request's cache key, made for the fresh hit and handed on to
    /// Pingora's cache machinery if the request goes on.
    cache_key: Option<pingora::cache::CacheKey>,
}

/// Whether the site's cache takes part in the request: Pingora's cache
/// machinery is switched on for it (`request_cache_filter`), and only then
/// may a fresh hit answer it (`fresh_hit`).
fn uses_cache(session: &Session, site: &Site) -> bool {
    site.policy.cache.enabled && cache::read_method(&session.req_header().method) && !session.is_upgrade_req()
}

fn client_ip(session: &Session) -> IpAddr {
    session.client_addr().and_then(|a| a.as_inet()).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

const HTML: &str = "text/html; charset=utf-8";

/// How long the edge goes on reading, and dropping, the body of an
/// HTTP/1 request it refused with 413, before it closes the connection.
/// A client still sending then reads the answer instead of a reset
/// (nginx's lingering close; its `lingering_time` is 30 s). HTTP/2 needs
/// none: the stream's reset tells the client to stop.
const LINGER: Duration = Duration::from_secs(5);

/// How long an HTTP/2 answer given before the request's body is all in
/// (one of edge's pages: 413, 429, a 502 during an upload) goes ahead of
/// the stream's reset. (When the backend answers early, Pingora reads the
/// rest of the body first: no reset.) curl 7.88 drops an answer that
/// arrives in one TLS record with the reset (exit 92, no status): the
/// answer must be written first. The connection's task, which writes it,
/// may run on another thread than the request's (Pingora spawns streams
/// on any of the service's threads).
const RESET_AFTER: Duration = Duration::from_millis(5);

/// The request's host as sent: the `Host` header, else the authority of
/// the request line (absolute URI, HTTP/2's `:authority`).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The host and path with query that a request's cache key is made of.
fn cache_url(req: &RequestHeader) -> (&str, &str) {
    let host = request_host(req).and_then(router::host_of).unwrap_or("");
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    (host.trim_end_matches('.'), path)
}

/// The size of a request header as HTTP/1.1 writes it: the request line,
/// each field as `name: value` and its line end, and the blank line. An
/// HTTP/2 request is measured the same way (its pseudo-header fields make
/// the request line).
fn header_bytes(req: &RequestHeader) -> usize {
    let target =
        req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + req.uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method.as_str().len() + target + " HTTP/1.1\r\n ".len();
    req.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>() + line + 2
}

/// Writes one of the edge's own answers (never stored by caches).
async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    headers: &[(&str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in headers {
        resp.insert_header(name.to_string(), value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head_only).await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

impl Proxy {
    /// Answers with one of the edge's pages; the request ends there.
    async fn page(&self, session: &mut Session, ctx: &mut Ctx, page: Page) -> Result<bool> {
        ctx.answered = Some(page_label(page));
        let retry: Vec<(&str, String)> =
            page.retry_after().map(|s| ("retry-after", s.to_string())).into_iter().collect();
        let refused_body = page == Page::TooLarge && !session.is_http2();
        if refused_body {
            // Not kept alive: the rest of the body is not read to the end.
            session.set_keepalive(None);
        }
        respond(session, page.status(), HTML, Bytes::from_static(page.body().as_bytes()), &retry).await?;
        if refused_body {
            let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
        }
        Ok(true)
    }

    /// Answers a `GET` or `HEAD` without `Range` ([`cache::plain_read`])
    /// from a fresh stored response, as Pingora's hit path would answer it
    /// (the hit header, then the same conditional and range filters) but
    /// without its cache machinery (lookup, meta, hit handler, phases).
    /// `false`: the request goes on to Pingora, which handles every other
    /// case (misses, stale copies, variants, ranges).
    async fn fresh_hit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let (Some(cache), Some(site)) = (&self.shared.cache, &ctx.site) else { return Ok(false) };
        let req = session.req_header();
        if !uses_cache(session, site) || !cache::plain_read(req) {
            return Ok(false);
        }
        let head = req.method == http::Method::HEAD;
        let (host, path) = cache_url(req);
        let key = cache::key(&site.name, host, path);
        let now = std::time::SystemTime::now();
        let hit = if session.is_body_empty() { cache.fresh(&key, now) } else { None };
        ctx.cache_key = Some(key);
        let Some(hit) = hit else { return Ok(false) };
        let mut header = cache::hit_header(hit.header, hit.epoch, now)?;
        let not_modified = self.cache_not_modified_filter(session, &header, ctx).unwrap_or(false);
        if not_modified {
            pingora::protocols::http::conditional_filter::to_304(&mut header);
        }
        // No `Range` here: this only says `Accept-Ranges` where it applies.
        self.range_header_filter(session, &mut header, ctx);
        let status = cache::cache_status(Outcome::Hit, Some(cache::ttl_until(hit.fresh_until, now)), false);
        header.insert_header("cache-status", status.into_owned())?;
        ctx.cache = Some(Outcome::Hit);
        let header_only = head || not_modified;
        session.write_response_header(Box::new(header), header_only).await?;
        if !header_only {
            session.write_response_body(Some(hit.body), true).await?;
        }
        Ok(true)
    }

    /// A redirect written by the edge.
    async fn redirect(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        why: &'static str,
        status: u16,
        url: String,
    ) -> Result<bool> {
        ctx.answered = Some(why);
        let body = "<!doctype html><title>Moved</title><h1>Moved</h1>\n";
        respond(session, status, HTML, Bytes::from_static(body.as_bytes()), &[("location", url)]).await?;
        Ok(true)
    }
}

/// No upstream can take the request now: an upstream failure, so a stored
/// response may be served stale (else the edge's 503 page).
fn unavailable(why: &'static str) -> Box<Error> {
    Error::create(ErrorType::HTTPStatus(503), pingora::ErrorSource::Upstream, Some(why.into()), None)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            site: None,
            snapshot: None,
            tried: Vec::new(),
            upstream: None,
            upstream_fd: None,
            answered: None,
            tls: false,
            stored: false,
            cache: None,
            _in_flight: None,
            _at_backend: None,
            body_limit: 0,
            body_sent: 0,
            cache_key: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let settings = &self.shared.settings;
        // Each read of an HTTP/1.1 request body (Pingora's default: 60 s);
        // HTTP/2 bodies are timed by `h2_timeouts`.
        session.set_read_timeout(Some(settings.body_timeout));
        let req = session.req_header();
        let host = request_host(req);
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        // ACME HTTP-01: answered by the edge, before routing and redirects.
        if let (Some(acme), Some(token)) = (&self.shared.acme, path.strip_prefix("/.well-known/acme-challenge/")) {
            if let Some(answer) = acme.http01(token) {
                ctx.answered = Some("acme_challenge");
                respond(session, 200, "application/octet-stream", Bytes::from(answer), &[]).await?;
                return Ok(true);
            }
        }
        let tls = session.digest().and_then(|d| d.ssl_digest.clone());
        ctx.tls = tls.is_some();
        if let Some(handshake) = tls.as_ref().and_then(|t| t.extension.get::<Handshake>()) {
            // With SNI, the request's host must be one its certificate
            // covers; else the client reused a connection it should not.
            let host = host.and_then(router::host_of).map(|h| h.trim_end_matches('.').to_ascii_lowercase());
            if let (Some(_), Some(cert), Some(host)) = (&handshake.sni, &handshake.cert, host) {
                if !cert.covers(&host) {
                    return self.page(session, ctx, Page::Misdirected).await;
                }
            }
        }
        let snapshot = Arc::clone(&self.shared.table.load());
        let scheme = if ctx.tls { "https" } else { "http" };
        let decision =
            router::decide(&snapshot, host, settings.default_site.as_deref(), client_ip(session), scheme, path);
        match decision {
            Decision::Proxy(site) if !ctx.tls && site.policy.tls.redirect_https && !settings.tls_listen.is_empty() => {
                let url = host.and_then(|h| router::https_url(h, settings.tls_listen[0].port(), path));
                let Some(url) = url else { return self.page(session, ctx, Page::BadRequest).await };
                // 308 keeps the method and body of a POST; 301 for reads.
                let method = &session.req_header().method;
                let status = if method == http::Method::GET || method == http::Method::HEAD { 301 } else { 308 };
                self.redirect(session, ctx, "redirect_https", status, url).await
            }
            Decision::Proxy(site) => {
                let header_limit = site.policy.limits.max_header_bytes.unwrap_or(settings.max_header_bytes);
                if header_bytes(req) > header_limit as usize {
                    return self.page(session, ctx, Page::HeaderTooLarge).await;
                }
                let declared =
                    req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                let limit = site.policy.limits.max_body_bytes.unwrap_or(settings.max_body_bytes);
                if declared.is_some_and(|n: u64| n > limit) {
                    return self.page(session, ctx, Page::TooLarge).await;
                }
                ctx.body_limit = limit;
                match self.shared.limiter.admit(&site, client_ip(session)) {
                    Ok(guard) => ctx._in_flight = guard,
                    Err(refusal) => {
                        self.shared.metrics.limited.with_label_values(&[refusal.label()]).inc();
                        return self.page(session, ctx, Page::TooManyRequests).await;
                    }
                }
                ctx.site = Some(site);
                ctx.snapshot = Some(snapshot);
                self.fresh_hit(session, ctx).await
            }
            Decision::Redirect(url) => self.redirect(session, ctx, "redirect", 301, url).await,
            Decision::Page(page) => self.page(session, ctx, page).await,
        }
    }

    /// A body of no declared length (chunked, or HTTP/2 without
    /// `Content-Length`) is counted as it streams to the backend: past the
    /// site's `max_body_bytes`, the request fails with 413 (the page if no
    /// answer has started) and the backend connection is dropped.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_sent += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_sent > ctx.body_limit {
            return Err(Error::create(
                ErrorType::HTTPStatus(413),
                pingora::ErrorSource::Downstream,
                Some("the request body is over the site's max_body_bytes".into()),
                None,
            ));
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let site = ctx.site.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no site routed"))?;
        ctx.body_sent = 0;
        // The request's own snapshot: one table read per request, retries
        // included (a retry skips the backends already tried).
        let snapshot = ctx.snapshot.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no snapshot"))?;
        let Some(upstream) =
            router::pick(&snapshot, &site, &ctx.tried, rand::random(), |a| self.shared.health.is_out(a))
        else {
            return Err(unavailable("no backend of the site can take the request"));
        };
        if ctx._at_backend.is_none() {
            match self.shared.limiter.to_backend(&site) {
                Some(guard) => ctx._at_backend = guard,
                None => {
                    // Under attack, the site's backends are busy: a stale
                    // copy is served if there is one (an upstream error),
                    // else 503.
                    self.shared.metrics.limited.with_label_values(&["backend"]).inc();
                    return Err(unavailable("the site is under attack and its backends are busy"));
                }
            }
        }
        ctx.tried.push(upstream.backend.name.clone());
        let settings = &self.shared.settings;
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(settings.upstream_connect_timeout);
        peer.options.read_timeout = Some(settings.upstream_read_timeout);
        peer.options.idle_timeout = Some(settings.upstream_idle_timeout);
        if upstream.proxy_protocol {
            let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| a.and_then(|a| a.as_inet()).copied();
            if let (Some(client), Some(local)) = (inet(session.client_addr()), inet(session.server_addr())) {
                let connect = ProxyV2Connect::new(client, local, settings.upstream_connect_timeout);
                peer.options.custom_l4 = Some(Arc::new(connect));
                peer.group_key = ProxyV2Connect::group_key(client, local);
            }
        }
        ctx.upstream = Some(upstream);
        Ok(Box::new(peer))
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let (Some(cache), Some(site)) = (&self.shared.cache, &ctx.site) else { return Ok(()) };
        if uses_cache(session, site) {
            session.cache.enable(cache.store, Some(cache.eviction), Some(cache.predictor), Some(cache.lock), None);
            session.cache.set_max_file_size_bytes(cache.max_object);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<pingora::cache::CacheKey> {
        if let Some(key) = ctx.cache_key.take() {
            return Ok(key);
        }
        let site = ctx.site.as_ref().map_or("", |s| &*s.name);
        let (host, path) = cache_url(session.req_header());
        Ok(cache::key(site, host, path))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<pingora::cache::RespCacheable> {
        let authorization = session.req_header().headers.contains_key(http::header::AUTHORIZATION);
        let default_ttl = ctx.site.as_ref().map_or(0, |s| s.policy.cache.default_ttl_secs);
        let declared: Option<usize> =
            resp.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let max = self.shared.cache.as_ref().map_or(0, |c| c.max_object);
        if declared.is_some_and(|n| n > max) {
            // Pingora's size tracker stops bodies without a length.
            return Ok(pingora::cache::RespCacheable::Uncacheable(pingora::cache::NoCacheReason::ResponseTooLarge));
        }
        let verdict = cache::response_cacheable(resp, authorization, default_ttl);
        ctx.stored = matches!(verdict, pingora::cache::RespCacheable::Cacheable(_));
        Ok(verdict)
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora::cache::CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(&self, session: &mut Session, ctx: &mut Ctx, error: Option<&Error>) -> bool {
        if error.is_some_and(|e| e.esource() != &pingora::ErrorSource::Upstream) {
            return false;
        }
        let under_attack = ctx.site.as_ref().is_some_and(|s| s.protection == routing_table::Protection::UnderAttack);
        cache::stale_allowed(session.cache.cache_meta(), std::time::SystemTime::now(), error.is_some(), under_attack)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The request is written by now: see quick_ack for why here. The fd
        // is used up, so it is only used while Pingora still holds the
        // connection.
        super::quick_ack::on_upstream_header(&mut ctx.upstream_fd, resp);
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if ctx.answered.is_some() || ctx.site.is_none() || self.shared.cache.is_none() {
            return Ok(());
        }
        let outcome = Outcome::of(&session.cache.phase());
        let ttl = match outcome {
            Outcome::Hit | Outcome::Stale | Outcome::Revalidated => {
                Some(cache::ttl(session.cache.cache_meta(), std::time::SystemTime::now()))
            }
            _ => None,
        };
        ctx.cache = Some(outcome);
        match cache::cache_status(outcome, ttl, ctx.stored) {
            std::borrow::Cow::Borrowed(v) => resp.insert_header("cache-status", http::HeaderValue::from_static(v))?,
            std::borrow::Cow::Owned(v) => resp.insert_header("cache-status", v)?,
        };
        Ok(())
    }

    fn fail_to_connect(&self, _session: &mut Session, peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        tracing::warn!(peer = %peer, error = %e, "http: upstream connect failed");
        self.shared.metrics.upstream_errors.with_label_values(&["connect"]).inc();
        if ctx.tried.len() < MAX_ATTEMPTS {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = client_ip(session);
        let trusted = self.shared.settings.trusted_proxies.iter().any(|n| n.contains(&client));
        let forwarded = match up.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) if trusted && !earlier.is_empty() => format!("{earlier}, {client}"),
            _ => client.to_string(),
        };
        up.insert_header("x-forwarded-for", forwarded)?;
        let keep_proto = trusted && up.headers.contains_key("x-forwarded-proto");
        if !keep_proto {
            up.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        }
        if let Some(host) = up.headers.get(http::header::HOST).cloned() {
            if !(trusted && up.headers.contains_key("x-forwarded-host")) {
                up.insert_header("x-forwarded-host", host)?;
            }
        }
        Ok(())
    }

    /// A request that could not be proxied gets the edge's page: 503 with
    /// Retry-After when no backend could take it, 502 when the one that
    /// took it failed, 413 when its body grew past the site's limit.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // An answer already under way (or a switch of protocols) cannot be
        // replaced: the connection is closed, which cuts it short.
        if let Some(written) = session.response_written().filter(|r| !r.status.is_informational() || r.status == 101) {
            return FailToProxy { error_code: written.status.as_u16(), can_reuse_downstream: false };
        }
        let page = match e.etype() {
            ErrorType::HTTPStatus(503) => Some(Page::NoBackend),
            ErrorType::HTTPStatus(413) => Some(Page::TooLarge),
            _ if e.esource() == &pingora::ErrorSource::Upstream => Some(Page::BadGateway),
            _ => None,
        };
        let code = match page {
            Some(page) => {
                if let Err(e) = self.page(session, ctx, page).await {
                    tracing::debug!(error = %e, "http: could not send the error page");
                }
                page.status()
            }
            // The client's side failed: nothing if it is gone, 408 if its
            // body stopped coming (`body_timeout_secs`, as nginx), 400 if
            // it sent garbage.
            None => {
                let code = match e.etype() {
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                    ErrorType::HTTPStatus(code) => *code,
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                };
                if code > 0 {
                    let _ = session.respond_error(code).await;
                }
                code
            }
        };
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // Answered before the request's body is all in: over HTTP/2, the
        // stream is reset (NO_ERROR) once the session is dropped, which
        // stops the upload. See [`RESET_AFTER`].
        if session.is_http2() && !session.is_body_done() {
            tokio::time::sleep(RESET_AFTER).await;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let metrics = &self.shared.metrics;
        metrics.count_request(status);
        if let Some(site) = &ctx.site {
            metrics.count_site(&site.name, status);
        }
        metrics.duration.observe(ctx.started.elapsed().as_secs_f64());
        if let Some(outcome) = ctx.cache {
            metrics.count_cache(outcome.index());
        }
        if let Some(e) = e {
            if ctx.upstream.is_some() && ctx.answered.is_none() {
                metrics.upstream_errors.with_label_values(&["proxy"]).inc();
            }
            tracing::debug!(error = %e, "http: request ended with an error");
        }
        let req = session.req_header();
        tracing::info!(
            client = %client_ip(session),
            method = %req.method,
            host = request_host(req).unwrap_or(""),
            path = req.uri.path(),
            status,
            site = ctx.site.as_ref().map_or("", |s| &*s.name),
            backend = ctx.upstream.as_ref().map_or("", |u| &*u.backend.name),
            answered = ctx.answered.unwrap_or(""),
            cache = ctx.cache.map_or("", |c| c.label()),
            ms = ctx.started.elapsed().as_millis() as u64,
            "http request"
        );
    }
}

fn page_label(page: Page) -> &'static str {
    match page {
        Page::BadRequest => "bad_request",
        Page::UnknownHost => "unknown_host",
        Page::Denied => "denied",
        Page::Quarantine => "quarantine",
        Page::Maintenance => "maintenance",
        Page::NoBackend => "no_backend",
        Page::BadGateway => "bad_gateway",
        Page::Misdirected => "misdirected",
        Page::TooLarge => "too_large",
        Page::HeaderTooLarge => "header_too_large",
        Page::TooManyRequests => "limited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_counts_what_http1_writes() {
        let mut req = RequestHeader::build("GET", b"/a/b?c=d", None).unwrap();
        req.insert_header("host", "blog.test").unwrap();
        req.insert_header("x-filler", "abc").unwrap();
        let wire = "GET /a/b?c=d HTTP/1.1\r\nhost: blog.test\r\nx-filler: abc\r\n\r\n";
        assert_eq!(header_bytes(&req), wire.len());
    }
}
