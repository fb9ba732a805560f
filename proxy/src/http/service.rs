//! The Pingora proxy: each request reads the table snapshot once, in
//! `request_filter`, and is answered by the edge (pages, redirects) or sent
//! to an upstream of its site, picked per attempt.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use routing_table::{Site, Snapshot, Table};

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
    tried: Vec<String>,
    upstream: Option<Upstream>,
    /// What the edge answered itself, for the log.
    answered: Option<&'static str>,
}

fn client_ip(session: &Session) -> IpAddr {
    session.client_addr().and_then(|a| a.as_inet()).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

/// Writes one of the edge's own answers.
async fn respond(session: &mut Session, status: u16, body: &'static str, headers: &[(&str, String)]) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in headers {
        resp.insert_header(name.to_string(), value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head_only).await?;
    if !head_only {
        session.write_response_body(Some(Bytes::from_static(body.as_bytes())), true).await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { started: Instant::now(), site: None, snapshot: None, tried: Vec::new(), upstream: None, answered: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let settings = &self.shared.settings;
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let snapshot = Arc::clone(&self.shared.table.load());
        let decision =
            router::decide(&snapshot, host, settings.default_site.as_deref(), client_ip(session), "http", path);
        match decision {
            Decision::Proxy(site) => {
                let declared =
                    req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                let limit = site.policy.limits.max_body_bytes.unwrap_or(settings.max_body_bytes);
                if declared.is_some_and(|n: u64| n > limit) {
                    ctx.answered = Some("too_large");
                    respond(session, 413, "<!doctype html><title>413</title><h1>Request too large</h1>\n", &[]).await?;
                    return Ok(true);
                }
                ctx.site = Some(site);
                ctx.snapshot = Some(snapshot);
                Ok(false)
            }
            Decision::Redirect(url) => {
                ctx.answered = Some("redirect");
                let body = "<!doctype html><title>301 Moved Permanently</title><h1>Moved</h1>\n";
                respond(session, 301, body, &[("location", url)]).await?;
                Ok(true)
            }
            Decision::Page(page) => {
                ctx.answered = Some(page_label(page));
                let retry: Vec<(&str, String)> =
                    page.retry_after().map(|s| ("retry-after", s.to_string())).into_iter().collect();
                respond(session, page.status(), page.body(), &retry).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let site = ctx.site.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no site routed"))?;
        // The request's own snapshot: one table read per request, retries
        // included (a retry skips the backends already tried).
        let snapshot = ctx.snapshot.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no snapshot"))?;
        let Some(upstream) = router::pick(&snapshot, &site, &ctx.tried, rand::random()) else {
            ctx.answered = Some(page_label(Page::NoBackend));
            return Err(Error::explain(ErrorType::HTTPStatus(503), "no backend of the site can take the request"));
        };
        ctx.tried.push(upstream.backend.name.to_string());
        let settings = &self.shared.settings;
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(settings.upstream_connect_timeout);
        peer.options.read_timeout = Some(settings.upstream_read_timeout);
        peer.options.idle_timeout = Some(settings.upstream_idle_timeout);
        ctx.upstream = Some(upstream);
        Ok(Box::new(peer))
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
        _ctx: &mut Ctx,
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
            up.insert_header("x-forwarded-proto", "http")?;
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
    /// took it failed.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let page = match e.etype() {
            ErrorType::HTTPStatus(503) => Some(Page::NoBackend),
            _ if e.esource() == &pingora::ErrorSource::Upstream => Some(Page::BadGateway),
            _ => None,
        };
        let code = match page {
            Some(page) => {
                let retry: Vec<(&str, String)> =
                    page.retry_after().map(|s| ("retry-after", s.to_string())).into_iter().collect();
                if let Err(e) = respond(session, page.status(), page.body(), &retry).await {
                    tracing::debug!(error = %e, "http: could not send the error page");
                }
                page.status()
            }
            // The client's side failed (closed, sent garbage): 400 if it can
            // still read one, nothing if it is gone.
            None => match e.etype() {
                ErrorType::HTTPStatus(code) => {
                    let _ = session.respond_error(*code).await;
                    *code
                }
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                _ => {
                    let _ = session.respond_error(400).await;
                    400
                }
            },
        };
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let metrics = &self.shared.metrics;
        metrics.requests.with_label_values(&[status_class(status)]).inc();
        metrics.duration.observe(ctx.started.elapsed().as_secs_f64());
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
            host = req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or(""),
            path = req.uri.path(),
            status,
            site = ctx.site.as_ref().map_or("", |s| &*s.name),
            backend = ctx.upstream.as_ref().map_or("", |u| &*u.backend.name),
            answered = ctx.answered.unwrap_or(""),
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
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}
