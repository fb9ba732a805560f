//! `edge_ssh_*` metrics. Labels are bounded: auth method (3), result (6),
//! direction (2); no user or backend labels.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct SshMetrics {
    pub connections: IntCounterVec,
    pub open: IntGauge,
    pub auth: IntCounterVec,
    pub routed: IntCounter,
    pub channels: IntCounter,
    pub bytes: IntCounterVec,
    pub duration: Histogram,
}

pub const METHODS: [&str; 3] = ["password", "keyboard_interactive", "publickey"];
pub const RESULTS: [&str; 5] = ["ok", "failed", "rate_limited", "upstream_error", "not_allowed"];

impl SshMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.auth.clone()))?;
        registry.register(Box::new(m.routed.clone()))?;
        registry.register(Box::new(m.channels.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }

    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let m = Self {
            connections: IntCounterVec::new(
                Opts::new("edge_ssh_connections_total", "SSH connections, by result (accepted, refused_limit)."),
                &["result"],
            )?,
            open: IntGauge::new("edge_ssh_connections_open", "SSH connections open now.")?,
            auth: IntCounterVec::new(
                Opts::new("edge_ssh_auth_total", "SSH login attempts by method and result."),
                &["method", "result"],
            )?,
            routed: IntCounter::new("edge_ssh_sessions_routed_total", "SSH logins routed to a backend.")?,
            channels: IntCounter::new("edge_ssh_channels_total", "SSH channels relayed.")?,
            bytes: IntCounterVec::new(
                Opts::new("edge_ssh_bytes_total", "Channel bytes relayed, by direction (to_backend, to_client)."),
                &["direction"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new("edge_ssh_session_seconds", "Duration of routed SSH sessions.")
                    .buckets(vec![1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]),
            )?,
        };
        for r in ["accepted", "refused_limit"] {
            m.connections.with_label_values(&[r]);
        }
        for method in METHODS {
            for r in RESULTS {
                m.auth.with_label_values(&[method, r]);
            }
        }
        for d in ["to_backend", "to_client"] {
            m.bytes.with_label_values(&[d]);
        }
        Ok(m)
    }
}
