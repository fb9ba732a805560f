//! `edge_http_*` metrics. Labels are bounded: status class (6) and upstream
//! error kind (2); no site, host or backend label yet.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: Histogram,
    pub upstream_errors: IntCounterVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        Ok(m)
    }

    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new("edge_http_requests_total", "HTTP requests by response status class (none: no response)."),
                &["status_class"],
            )?,
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
        };
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "none"] {
            m.requests.with_label_values(&[class]);
        }
        for kind in ["connect", "proxy"] {
            m.upstream_errors.with_label_values(&[kind]);
        }
        Ok(m)
    }
}
