//! Counts and latency per protocol, the moves, and how they are shown: a
//! table on the terminal and a JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Protocols the tool knows; those Edge does not serve yet are reported as
/// absent, never as passes.
pub const PROTOCOLS: &[&str] = &["http1", "http2", "tls", "imap", "pop3", "smtp", "ssh", "dns"];

/// One protocol's counts and latency, as measured by its client.
pub struct ProtoStats {
    pub requests: u64,
    pub failed: u64,
    pub misrouted: u64,
    pub latency: Histogram<u64>,
}

impl Default for ProtoStats {
    fn default() -> Self {
        ProtoStats { requests: 0, failed: 0, misrouted: 0, latency: micros() }
    }
}

impl ProtoStats {
    pub fn merge(&mut self, other: &ProtoStats) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.misrouted += other.misrouted;
        let _ = self.latency.add(&other.latency);
    }
}

/// A histogram of microseconds, 1 µs to 60 s, 3 significant digits.
pub fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 60_000_000));
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        (!h.is_empty()).then(|| Percentiles {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProtoReport {
    Measured {
        requests: u64,
        failed: u64,
        misrouted: u64,
        latency: Option<Percentiles>,
    },
    /// Not measured: Edge has no listener for it yet, or the load test no
    /// client.
    Absent {
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MovesReport {
    pub done: u64,
    /// Refused by the edge or not acknowledged (each is also an error line).
    pub failed: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Time from sending a move to its acknowledgement.
    pub ack_latency: Option<Percentiles>,
    /// Time from a move's acknowledgement to the first answer from its new
    /// backend to a request started after the ack, in the load. Includes the
    /// wait for such a request, so it is bounded below by the query interval
    /// per route.
    pub ack_to_first_new: Option<Percentiles>,
    /// The probe: right after each acknowledgement the mover queries every
    /// moved database once, in turn. Time from the ack to the answer of the
    /// first one.
    pub probe_latency: Option<Percentiles>,
    pub probes: u64,
    pub probe_failed: u64,
    /// Probe answers from anything but the new backend.
    pub probe_misrouted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub duration_secs: f64,
    pub target: String,
    pub protocols: BTreeMap<String, ProtoReport>,
    pub moves: MovesReport,
}

impl Report {
    /// Failed plus misrouted, over every measured protocol and the probes.
    pub fn errors(&self) -> (u64, u64) {
        let start = (self.moves.probe_failed, self.moves.probe_misrouted);
        self.protocols.values().fold(start, |(f, m), p| match p {
            ProtoReport::Measured { failed, misrouted, .. } => (f + failed, m + misrouted),
            ProtoReport::Absent { .. } => (f, m),
        })
    }

    pub fn table(&self) -> String {
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let mut out = String::new();
        let _ = writeln!(out, "loadtest: {:.1} s against {}", self.duration_secs, self.target);
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "proto", "requests", "failed", "misrouted", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (name, p) in &self.protocols {
            match p {
                ProtoReport::Measured { requests, failed, misrouted, latency } => {
                    let l = latency.map_or(["-".to_string(), "-".into(), "-".into(), "-".into()], |l| {
                        [ms(l.p50_us), ms(l.p99_us), ms(l.p999_us), ms(l.max_us)]
                    });
                    let _ = writeln!(
                        out,
                        "{name:<6} {requests:>10} {failed:>7} {misrouted:>9} {:>9} {:>9} {:>9} {:>9}",
                        l[0], l[1], l[2], l[3]
                    );
                }
                ProtoReport::Absent { reason } => {
                    let _ = writeln!(out, "{name:<6} {:>10}  ({reason})", "absent");
                }
            }
        }
        let m = &self.moves;
        let kinds: Vec<String> = m.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "moves: {} done, {} failed ({})", m.done, m.failed, kinds.join(", "));
        if let Some(a) = m.ack_latency {
            let _ = writeln!(
                out,
                "  move acknowledged after: p50 {} ms, p99 {} ms, max {} ms",
                ms(a.p50_us),
                ms(a.p99_us),
                ms(a.max_us)
            );
        }
        if m.probes > 0 {
            let timing = m.probe_latency.map_or(String::new(), |a| {
                format!("; ack -> answer from the new backend: p50 {} ms, p99 {} ms", ms(a.p50_us), ms(a.p99_us))
            });
            let _ = writeln!(
                out,
                "  probes right after each ack: {} ({} failed, {} misrouted){timing}",
                m.probes, m.probe_failed, m.probe_misrouted
            );
        }
        if let Some(a) = m.ack_to_first_new {
            let _ = writeln!(
                out,
                "  in the load, ack -> first answer from the new backend: p50 {} ms, p99 {} ms (includes the wait for a query)",
                ms(a.p50_us),
                ms(a.p99_us)
            );
        }
        let (failed, misrouted) = self.errors();
        let _ = writeln!(out, "result: {failed} failed, {misrouted} misrouted");
        out
    }
}
