//! `edge_http_*` metrics. Labels are bounded: status class (6), upstream
//! error kind (2), cache result (5), limit (5); sites only those named in
//! `http.metrics_sites` (the rest are `other`); backends by table upstream.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    /// `requests` by status class, resolved once: the per-request count
    /// does no label lookup.
    by_class: [IntCounter; 6],
    pub duration: Histogram,
    pub upstream_errors: IntCounterVec,
    pub cache: IntCounterVec,
    /// By backend and port: as many as the table has upstreams.
    pub upstream_healthy: IntGaugeVec,
    pub limited: IntCounterVec,
    pub tls_handshakes: IntCounter,
    pub tls_handshake_errors: IntCounter,
    /// By site (those in `metrics_sites`, the rest as `other`) and status
    /// class.
    pub site_requests: IntCounterVec,
    /// `site_requests` resolved once per named site, and for `other`.
    sites: Arc<HashMap<String, [IntCounter; 6]>>,
    other_site: [IntCounter; 6],
    /// `cache` by result, in [`CACHE_RESULTS`] order.
    by_cache: [IntCounter; 5],
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.cache.clone()))?;
        registry.register(Box::new(m.upstream_healthy.clone()))?;
        registry.register(Box::new(m.limited.clone()))?;
        registry.register(Box::new(m.tls_handshakes.clone()))?;
        registry.register(Box::new(m.tls_handshake_errors.clone()))?;
        registry.register(Box::new(m.site_requests.clone()))?;
        Ok(m)
    }

    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("edge_http_requests_total", "HTTP requests by response status class (none: no response)."),
            &["status_class"],
        )?;
        let by_class = STATUS_CLASSES.map(|class| requests.with_label_values(&[class]));
        let cache = IntCounterVec::new(
            Opts::new(
                "edge_http_cache_total",
                "Responses by what the cache did (hit, miss, stale, revalidated, bypass).",
            ),
            &["result"],
        )?;
        let by_cache = CACHE_RESULTS.map(|result| cache.with_label_values(&[result]));
        let site_requests = IntCounterVec::new(
            Opts::new(
                "edge_http_site_requests_total",
                "HTTP requests routed to a site, by site (http.metrics_sites; the rest are `other`) and status class.",
            ),
            &["site", "status_class"],
        )?;
        let other_site = STATUS_CLASSES.map(|class| site_requests.with_label_values(&["other", class]));
        let m = Self {
            requests,
            by_class,
            cache,
            by_cache,
            site_requests,
            other_site,
            sites: Arc::default(),
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "edge_http_request_seconds",
                    "HTTP request duration, first byte in to last byte out.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new("edge_http_upstream_errors_total", "Upstream failures by kind (connect, proxy)."),
                &["kind"],
            )?,
            upstream_healthy: IntGaugeVec::new(
                Opts::new(
                    "edge_http_upstream_healthy",
                    "1 while the upstream (backend, port) passes its health checks.",
                ),
                &["backend", "port"],
            )?,
            limited: IntCounterVec::new(
                Opts::new(
                    "edge_http_limited_total",
                    "Requests refused by a limit: rate, concurrency (429), backend (under attack, 503 or stale); connections closed: connections (per client address), header_timeout, body_timeout (HTTP/2; HTTP/1.1 body timeouts are 408s).",
                ),
                &["limit"],
            )?,
            tls_handshakes: IntCounter::new(
                "edge_http_tls_handshakes_total",
                "TLS handshakes completed on the HTTPS listeners.",
            )?,
            tls_handshake_errors: IntCounter::new(
                "edge_http_tls_handshake_errors_total",
                "TLS handshakes on the HTTPS listeners that failed or did not end in time.",
            )?,
        };
        for limit in ["rate", "concurrency", "backend", "connections", "header_timeout", "body_timeout"] {
            m.limited.with_label_values(&[limit]);
        }
        for kind in ["connect", "proxy"] {
            m.upstream_errors.with_label_values(&[kind]);
        }
        Ok(m)
    }

    /// Counts one request in `edge_http_requests_total`.
    pub fn count_request(&self, status: u16) {
        self.by_class[class_index(status)].inc();
    }

    /// Gives these sites their own `site` label (`http.metrics_sites`).
    pub fn name_sites<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let sites = names
            .into_iter()
            .map(|name| (name.to_string(), STATUS_CLASSES.map(|c| self.site_requests.with_label_values(&[name, c]))))
            .collect();
        self.sites = Arc::new(sites);
    }

    /// Counts one request routed to `site` in `edge_http_site_requests_total`.
    pub fn count_site(&self, site: &str, status: u16) {
        let counters = self.sites.get(site).unwrap_or(&self.other_site);
        counters[class_index(status)].inc();
    }

    /// Counts one response in `edge_http_cache_total` by its result
    /// ([`CACHE_RESULTS`] index).
    pub fn count_cache(&self, result: usize) {
        self.by_cache[result].inc();
    }
}

/// The `result` label values of `edge_http_cache_total`; the cache's
/// `Outcome` indexes them.
pub const CACHE_RESULTS: [&str; 5] = ["hit", "miss", "stale", "revalidated", "bypass"];

/// The `status_class` label values, in [`class_index`] order.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// A status's class label: `2xx`, … or `none` (no response).
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_sites_get_their_label_and_the_rest_count_as_other() {
        let mut m = HttpMetrics::unregistered().unwrap();
        m.name_sites(["shop"]);
        m.count_site("shop", 200);
        m.count_site("shop", 503);
        m.count_site("blog", 200);
        let get = |site: &str, class: &str| m.site_requests.with_label_values(&[site, class]).get();
        assert_eq!((get("shop", "2xx"), get("shop", "5xx"), get("other", "2xx")), (1, 1, 1));
        m.count_cache(0);
        assert_eq!(m.cache.with_label_values(&["hit"]).get(), 1);
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(399), "3xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(599), "5xx");
        assert_eq!(status_class(0), "none");
        assert_eq!(status_class(600), "none");
        let m = HttpMetrics::unregistered().unwrap();
        m.count_request(503);
        assert_eq!(m.requests.with_label_values(&["5xx"]).get(), 1);
    }
}
