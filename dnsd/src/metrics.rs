//! Prometheus metrics of dnsd: queries by type and RCODE, answer latency,
//! truncations, TCP connections, zone transfers and NOTIFYs.

use std::collections::HashMap;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Query types with a label of their own; others count as `other`, so a
/// client cannot grow the label set.
const QTYPES: &[&str] = &["A", "AAAA", "CNAME", "MX", "NS", "SOA", "SRV", "TXT", "ANY", "AXFR", "IXFR", "PTR"];

#[derive(Clone)]
pub struct DnsMetrics {
    queries: IntCounterVec,
    duration: HistogramVec,
    pub truncated: IntCounter,
    pub tcp_connections: IntGauge,
    pub tcp_refused: IntCounter,
    pub transfers: IntCounterVec,
    pub notifies: IntCounterVec,
}

impl DnsMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.queries.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.truncated.clone()))?;
        registry.register(Box::new(m.tcp_connections.clone()))?;
        registry.register(Box::new(m.tcp_refused.clone()))?;
        registry.register(Box::new(m.transfers.clone()))?;
        registry.register(Box::new(m.notifies.clone()))?;
        Ok(m)
    }

    /// Metrics nobody scrapes (tests, the fuzz target).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let buckets = vec![5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2];
        let m = Self {
            queries: IntCounterVec::new(
                Opts::new("edge_dns_queries_total", "DNS queries answered, by transport, type and RCODE."),
                &["transport", "qtype", "rcode"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("edge_dns_query_seconds", "Time from a query read to its answer built.")
                    .buckets(buckets),
                &["transport"],
            )?,
            truncated: IntCounter::new("edge_dns_truncated_total", "UDP answers sent truncated (TC set).")?,
            tcp_connections: IntGauge::new("edge_dns_tcp_connections", "Open DNS TCP connections.")?,
            tcp_refused: IntCounter::new(
                "edge_dns_tcp_refused_total",
                "DNS TCP connections closed at once because the connection limit was reached.",
            )?,
            transfers: IntCounterVec::new(
                Opts::new("edge_dns_transfers_total", "Zone transfers (AXFR/IXFR), by result."),
                &["result"],
            )?,
            notifies: IntCounterVec::new(
                Opts::new(
                    "edge_dns_notifies_total",
                    "NOTIFY to secondaries: messages sent (retries included), and rounds acked or failed after all tries.",
                ),
                &["result"],
            )?,
        };
        for r in ["done", "refused", "failed"] {
            m.transfers.with_label_values(&[r]);
        }
        for r in ["sent", "acked", "failed"] {
            m.notifies.with_label_values(&[r]);
        }
        Ok(m)
    }

    /// A per-thread recorder: counters resolved once per (type, RCODE) and a
    /// local histogram flushed in batches, so the UDP loop touches no shared
    /// hash map per query.
    pub fn recorder(&self, transport: &'static str) -> Recorder {
        Recorder {
            metrics: self.clone(),
            transport,
            counters: HashMap::default(),
            duration: self.duration.with_label_values(&[transport]).local(),
            pending: 0,
        }
    }
}

pub struct Recorder {
    metrics: DnsMetrics,
    transport: &'static str,
    counters: HashMap<(u16, u16), IntCounter, foldhash::fast::RandomState>,
    duration: prometheus::local::LocalHistogram,
    pending: u32,
}

impl Recorder {
    pub fn record(&mut self, qtype: RecordType, rcode: ResponseCode, truncated: bool, seconds: f64) {
        let key = (u16::from(qtype), u16::from(rcode));
        let (metrics, transport) = (&self.metrics, self.transport);
        self.counters
            .entry(key)
            .or_insert_with(|| {
                let name = qtype.to_string();
                let qtype = QTYPES.iter().find(|t| **t == name).copied().unwrap_or("other");
                metrics.queries.with_label_values(&[transport, qtype, rcode.to_str()])
            })
            .inc();
        if truncated {
            self.metrics.truncated.inc();
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) && rcode == ResponseCode::Refused {
            self.metrics.transfers.with_label_values(&["refused"]).inc();
        }
        self.duration.observe(seconds);
        self.pending += 1;
        if self.pending >= 256 {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        self.duration.flush();
        self.pending = 0;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
