//! The driver the login loads share (SSH, IMAP): workers at a share of the
//! rate, each logging in as a random member's user through the edge. The
//! answer names the backend that took the login; the ledger judges it like a
//! DNS answer, against the routes in force between the login's start and end.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::fixture::Fixture;
use crate::ledger::Verdict;
use crate::report::{record, ProtoStats};
use crate::rng::Rng;
use crate::{Live, Shared};

/// A login is given up after this long, and counted as failed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One protocol's login, as a load worker needs it.
pub trait Login: Clone + Send + Sync + 'static {
    /// The protocol's name, in log lines.
    const PROTOCOL: &'static str;
    /// The user name of member `m` for this protocol.
    fn user(fixture: &Fixture, m: usize) -> String;
    /// This protocol's live counters: requests, failed, misrouted.
    fn counters(live: &Live) -> [&AtomicU64; 3];
    /// Logs in as `user` through the edge; returns the backend name in the
    /// answer.
    fn login(&self, user: &str) -> impl Future<Output = Result<String, String>> + Send;
}

/// Runs `concurrency` workers, `rate` logins per second in all, until the
/// stop flag; `salt` keeps each protocol's random choices its own.
pub async fn run<L: Login>(login: L, rate: u32, concurrency: usize, salt: u64, shared: Shared) -> ProtoStats {
    let period = Duration::from_secs_f64(concurrency as f64 / f64::from(rate.max(1)));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (shared, login) = (shared.clone(), login.clone());
        // Spread the workers' first ticks over one period.
        let offset = period.mul_f64(w as f64 / concurrency as f64);
        let mut rng = Rng::new(shared.seed ^ salt ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        workers.push(tokio::spawn(async move { worker(login, offset, period, &shared, &mut rng).await }));
    }
    let mut stats = ProtoStats::default();
    for w in workers {
        if let Ok(s) = w.await {
            stats.merge(&s);
        }
    }
    stats
}

/// One worker's logins at its share of the rate, until the stop flag.
async fn worker<L: Login>(login: L, offset: Duration, period: Duration, shared: &Shared, rng: &mut Rng) -> ProtoStats {
    let Shared { fixture, ledger, live, stop, .. } = shared;
    let [requests, failed, misrouted] = L::counters(live);
    let protocol = L::PROTOCOL;
    let mut stats = ProtoStats::default();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let user = L::user(fixture, rng.below(fixture.members));
        stats.requests += 1;
        requests.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let answer = tokio::time::timeout(TIMEOUT, login.login(&user)).await;
        let end = Instant::now();
        let backend = match answer {
            Ok(Ok(name)) => fixture.backend_index(&name),
            Ok(Err(e)) => {
                tracing::warn!(%user, error = %e, "{protocol} login failed");
                None
            }
            Err(_) => {
                tracing::warn!(%user, "{protocol} login timed out");
                None
            }
        };
        let Some(backend) = backend else {
            stats.failed += 1;
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        record(&mut stats.latency, end - start);
        match ledger.lock().ok().and_then(|l| l.judge(&user, start, end, backend)) {
            Some(Verdict::Correct) => {}
            Some(Verdict::Misrouted { expected }) => {
                stats.misrouted += 1;
                misrouted.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%user, got = backend, expected, "{protocol} login misrouted");
            }
            None => stats.failed += 1,
        }
    }
    stats
}
