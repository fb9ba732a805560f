//! Prometheus metrics of the table: version, entities per kind,
//! transactions by result, and how long publishing and committing take.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::snapshot::Snapshot;
use crate::transaction::TxnError;

/// The table's metrics, registered once in the process registry.
#[derive(Clone)]
pub struct TableMetrics {
    version: IntGauge,
    entities: IntGaugeVec,
    transactions: IntCounterVec,
    publish: Histogram,
    commit: Histogram,
    stale: IntGauge,
}

impl TableMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.version.clone()))?;
        registry.register(Box::new(m.entities.clone()))?;
        registry.register(Box::new(m.transactions.clone()))?;
        registry.register(Box::new(m.publish.clone()))?;
        registry.register(Box::new(m.commit.clone()))?;
        registry.register(Box::new(m.stale.clone()))?;
        Ok(m)
    }

    /// Metrics that nobody scrapes (tests, benchmarks).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let buckets = vec![1e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5];
        let m = Self {
            version: IntGauge::new("edge_table_version", "Version of the published routing table.")?,
            entities: IntGaugeVec::new(
                Opts::new("edge_table_entities", "Entities in the published routing table, by kind."),
                &["kind"],
            )?,
            transactions: IntCounterVec::new(
                Opts::new("edge_table_transactions_total", "Table transactions by result."),
                &["result"],
            )?,
            publish: Histogram::with_opts(
                HistogramOpts::new(
                    "edge_table_publish_seconds",
                    "Time to validate a transaction and swap the snapshot, store commit excluded.",
                )
                .buckets(buckets.clone()),
            )?,
            commit: Histogram::with_opts(
                HistogramOpts::new("edge_table_commit_seconds", "Time to make a transaction durable in the store.")
                    .buckets(buckets),
            )?,
            stale: IntGauge::new(
                "edge_table_stale",
                "1 while the shared store (etcd) cannot be read: the table served may be behind other nodes'.",
            )?,
        };
        for result in ["applied", "unchanged", "rejected", "conflict", "failed"] {
            m.transactions.with_label_values(&[result]);
        }
        Ok(m)
    }

    pub(crate) fn published(&self, snap: &Snapshot, times: Option<(Duration, Duration)>) {
        self.version.set(snap.version() as i64);
        let c = snap.counts();
        for (kind, n) in [
            ("backend", c.backends),
            ("member", c.members),
            ("site", c.sites),
            ("host", c.hosts),
            ("mail_login", c.mail_logins),
            ("mail_domain", c.mail_domains),
            ("sftp_login", c.sftp_logins),
            ("database", c.databases),
            ("dns_name", c.dns_names),
        ] {
            self.entities.with_label_values(&[kind]).set(n as i64);
        }
        if let Some((publish, commit)) = times {
            self.transactions.with_label_values(&["applied"]).inc();
            self.publish.observe(publish.as_secs_f64());
            self.commit.observe(commit.as_secs_f64());
        }
    }

    pub(crate) fn rejected(&self, e: &TxnError) {
        let result = match e {
            TxnError::VersionConflict { .. } => "conflict",
            _ => "rejected",
        };
        self.transactions.with_label_values(&[result]).inc();
    }

    pub(crate) fn unchanged(&self) {
        self.transactions.with_label_values(&["unchanged"]).inc();
    }

    pub(crate) fn stale(&self, stale: bool) {
        self.stale.set(i64::from(stale));
    }

    pub(crate) fn failed(&self) {
        self.transactions.with_label_values(&["failed"]).inc();
    }
}
