//! DNS load: `A` queries for the fixture's databases over UDP, at a target
//! rate with a bounded number in flight. Each answer is judged by the
//! ledger: a wrong address is misrouted; a timeout, a bad RCODE or an
//! unparsable answer is failed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use crate::fixture::Fixture;
use crate::ledger::{Ledger, Verdict};
use crate::report::{record, ProtoStats};
use crate::rng::Rng;
use crate::{Live, Shared};

const TIMEOUT: Duration = Duration::from_secs(1);

pub struct DnsLoad {
    pub server: SocketAddr,
    pub zone: String,
    pub rate: u32,
    pub concurrency: usize,
}

/// What the DNS workers measured, merged.
pub struct DnsResult {
    pub stats: ProtoStats,
    pub first_new: hdrhistogram::Histogram<u64>,
}

impl DnsLoad {
    pub async fn run(self, shared: Shared) -> DnsResult {
        let Shared { fixture, ledger, live, stop, seed } = shared;
        let period = Duration::from_secs_f64(self.concurrency as f64 / f64::from(self.rate.max(1)));
        let this = Arc::new(self);
        let mut workers = Vec::new();
        for w in 0..this.concurrency {
            let (this, fixture, ledger, live, stop) =
                (this.clone(), fixture.clone(), ledger.clone(), live.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                // Spread the workers' first ticks over one period.
                let offset = period.mul_f64(w as f64 / this.concurrency as f64);
                let mut rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                this.worker(offset, period, &fixture, &ledger, &live, &stop, &mut rng).await
            }));
        }
        let mut out = DnsResult { stats: ProtoStats::default(), first_new: crate::report::micros() };
        for w in workers {
            if let Ok((stats, first)) = w.await {
                out.stats.merge(&stats);
                let _ = out.first_new.add(&first);
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    async fn worker(
        &self,
        offset: Duration,
        period: Duration,
        fixture: &Fixture,
        ledger: &Mutex<Ledger>,
        live: &Live,
        stop: &AtomicBool,
        rng: &mut Rng,
    ) -> (ProtoStats, hdrhistogram::Histogram<u64>) {
        let mut stats = ProtoStats::default();
        let mut first_new = crate::report::micros();
        let bind: SocketAddr = if self.server.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = match UdpSocket::bind(bind).await {
            Ok(s) if s.connect(self.server).await.is_ok() => s,
            _ => {
                stats.failed += 1;
                return (stats, first_new);
            }
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let member = rng.below(fixture.members);
            let db = fixture.database(member);
            let id = rng.next_u64() as u16;
            let query = query(id, &format!("{db}.mysql.{}", self.zone));
            let start = Instant::now();
            stats.requests += 1;
            live.dns_requests.fetch_add(1, Ordering::Relaxed);
            let answer = async {
                socket.send(&query).await.ok()?;
                loop {
                    let n = socket.recv(&mut buf).await.ok()?;
                    // A late answer to an earlier, timed-out query: skip it.
                    if n >= 2 && buf[..2] == id.to_be_bytes() {
                        return Some(n);
                    }
                }
            };
            let got = match tokio::time::timeout(TIMEOUT, answer).await {
                Ok(Some(n)) => backend_in(&buf[..n], fixture),
                _ => None,
            };
            let end = Instant::now();
            let Some(backend) = got else {
                stats.failed += 1;
                live.dns_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%db, "dns query failed (timeout, error RCODE or no address of ours)");
                continue;
            };
            record(&mut stats.latency, end - start);
            let observed = ledger.lock().map(|mut l| l.observe(&db, start, end, backend)).ok().flatten();
            match observed {
                Some((Verdict::Correct, first)) => {
                    if let Some(d) = first {
                        record(&mut first_new, d);
                    }
                }
                Some((Verdict::Misrouted { expected }, _)) => {
                    stats.misrouted += 1;
                    live.dns_misrouted.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%db, got = backend, expected, "dns answer misrouted");
                }
                None => stats.failed += 1,
            }
        }
        (stats, first_new)
    }
}

/// A query for `name`, type A, class IN, recursion not desired.
pub(crate) fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    if let Ok(name) = Name::from_ascii(format!("{name}.")) {
        m.add_query(Query::query(name, RecordType::A));
    }
    m.to_vec().unwrap_or_default()
}

/// The fixture backend an answer names, if it is a good answer.
pub(crate) fn backend_in(answer: &[u8], fixture: &Fixture) -> Option<usize> {
    let m = Message::from_vec(answer).ok()?;
    if m.metadata.response_code != ResponseCode::NoError || m.metadata.truncation {
        return None;
    }
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => fixture.backend_of(a.0),
        _ => None,
    })
}

/// The first address of `addrs` dnsd listens on (UDP).
pub fn pick(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs.iter().copied().find(|a| matches!(a.ip(), IpAddr::V4(_))).or_else(|| addrs.first().copied())
}
