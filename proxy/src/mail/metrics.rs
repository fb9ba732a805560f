//! `edge_mail_*` metrics. Labels are bounded: protocol (4), result (≤ 6),
//! direction (2); no user, recipient or backend labels.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::config::Protocol;

#[derive(Clone)]
pub struct MailMetrics {
    pub connections: IntCounterVec,
    pub open: IntGaugeVec,
    pub logins: IntCounterVec,
    pub recipients: IntCounterVec,
    pub bytes: IntCounterVec,
    pub duration: HistogramVec,
}

pub const LOGIN_RESULTS: [&str; 5] = ["ok", "failed", "rate_limited", "unavailable", "upstream_error"];
pub const RECIPIENT_RESULTS: [&str; 5] = ["accepted", "rejected", "other_backend", "unknown", "unavailable"];

impl MailMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.logins.clone()))?;
        registry.register(Box::new(m.recipients.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }

    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let m = Self {
            connections: IntCounterVec::new(
                Opts::new(
                    "edge_mail_connections_total",
                    "Mail connections by protocol and result (accepted, refused_limit).",
                ),
                &["protocol", "result"],
            )?,
            open: IntGaugeVec::new(
                Opts::new("edge_mail_connections_open", "Mail connections open now, by protocol."),
                &["protocol"],
            )?,
            logins: IntCounterVec::new(
                Opts::new("edge_mail_logins_total", "IMAP, POP3 and submission logins by protocol and result."),
                &["protocol", "result"],
            )?,
            recipients: IntCounterVec::new(
                Opts::new(
                    "edge_mail_mx_recipients_total",
                    "MX recipients by result (accepted, rejected by the backend, other_backend (452), unknown (550), unavailable (451)).",
                ),
                &["result"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new("edge_mail_bytes_total", "Bytes relayed after login, by protocol and direction."),
                &["protocol", "direction"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("edge_mail_session_seconds", "Duration of routed mail sessions, by protocol.")
                    .buckets(vec![1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]),
                &["protocol"],
            )?,
        };
        for p in Protocol::ALL {
            let p = p.label();
            for r in ["accepted", "refused_limit"] {
                m.connections.with_label_values(&[p, r]);
            }
            m.open.with_label_values(&[p]);
            for d in ["to_backend", "to_client"] {
                m.bytes.with_label_values(&[p, d]);
            }
            if p != "mx" {
                for r in LOGIN_RESULTS {
                    m.logins.with_label_values(&[p, r]);
                }
            }
        }
        for r in RECIPIENT_RESULTS {
            m.recipients.with_label_values(&[r]);
        }
        Ok(m)
    }
}
