//! Per-client-IP limits of the stream forwarders (SSH, mail): open
//! connections, and failed logins per minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Limits {
    max_connections: usize,
    max_failures: u32,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    connections: HashMap<IpAddr, usize>,
    /// Failures in the current minute window, by IP.
    failures: HashMap<IpAddr, (Instant, u32)>,
}

/// One open connection; counted until dropped.
pub struct Connection {
    ip: IpAddr,
    state: Arc<Mutex<State>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl Limits {
    pub fn new(max_connections: usize, max_failures: u32) -> Self {
        Self { max_connections, max_failures, state: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection from `ip`, or `None` when it has too many.
    pub fn connect(&self, ip: IpAddr) -> Option<Connection> {
        let mut s = self.lock();
        let n = s.connections.entry(ip).or_default();
        if *n >= self.max_connections {
            return None;
        }
        *n += 1;
        Some(Connection { ip, state: self.state.clone() })
    }

    /// True while `ip` has failed too many logins this minute.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let s = self.lock();
        s.failures.get(&ip).is_some_and(|(since, n)| since.elapsed() < WINDOW && *n >= self.max_failures)
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut s = self.lock();
        if s.failures.len() > 100_000 {
            s.failures.retain(|_, (since, _)| since.elapsed() < WINDOW);
        }
        let entry = s.failures.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = s.connections.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.connections.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_failures_are_capped_per_ip() {
        let limits = Limits::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let c1 = limits.connect(a).unwrap();
        let _c2 = limits.connect(a).unwrap();
        assert!(limits.connect(a).is_none());
        assert!(limits.connect(b).is_some());
        drop(c1);
        assert!(limits.connect(a).is_some());
        for _ in 0..3 {
            assert!(!limits.blocked(a));
            limits.failed(a);
        }
        assert!(limits.blocked(a));
        assert!(!limits.blocked(b));
    }
}
