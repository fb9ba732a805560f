//! Active health checks of the sites' upstreams: every interval, each
//! distinct upstream address (backend address and site port) of the current
//! table is probed, by TCP connect or by an HTTP request. One failed probe
//! takes an upstream out (so a dead one is out within interval + timeout,
//! 2 s by default); two passed probes in a row put it back. The picker
//! ([`super::router::pick`]) skips upstreams that are out, unless every
//! upstream of the site is.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntGaugeVec;
use routing_table::{BackendState, Table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Passed probes in a row that put an upstream back.
const RISE: u32 = 2;

/// How upstreams are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Off,
    /// A TCP connect.
    Tcp,
    /// `GET path` (HTTP/1.0, `Host` = the backend's name): any status
    /// below 500 passes.
    Http {
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Which upstreams are out, read by every request.
pub struct Health {
    out: ArcSwap<HashSet<SocketAddr>>,
    gauge: IntGaugeVec,
}

impl Health {
    /// `gauge` is `edge_http_upstream_healthy` ([`super::HttpMetrics`]).
    pub fn new(gauge: IntGaugeVec) -> Arc<Health> {
        Arc::new(Health { out: ArcSwap::default(), gauge })
    }

    /// Whether health checks took this upstream out.
    pub fn is_out(&self, addr: SocketAddr) -> bool {
        let out = self.out.load();
        !out.is_empty() && out.contains(&addr)
    }

    /// Probes until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, settings: HealthSettings, table: Table, mut shutdown: watch::Receiver<bool>) {
        if settings.probe == Probe::Off {
            return;
        }
        // Per upstream: failures and passes in a row.
        let mut state: HashMap<SocketAddr, (u32, u32)> = HashMap::new();
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let targets = targets(&table);
            let mut probes = tokio::task::JoinSet::new();
            for (addr, backend) in &targets {
                let (addr, backend, settings) = (*addr, backend.clone(), settings.clone());
                probes.spawn(async move { (addr, probe(addr, &backend, &settings).await) });
            }
            let mut results = Vec::with_capacity(targets.len());
            while let Some(done) = probes.join_next().await {
                if let Ok(r) = done {
                    results.push(r);
                }
            }
            state.retain(|addr, _| targets.contains_key(addr));
            let mut out = HashSet::new();
            for (addr, result) in results {
                let (fails, passes) = state.entry(addr).or_insert((0, RISE));
                let was_out = *fails > 0 && *passes < RISE;
                match &result {
                    Ok(()) => {
                        *passes += 1;
                        if *passes >= RISE {
                            *fails = 0;
                        }
                    }
                    Err(_) => {
                        *fails += 1;
                        *passes = 0;
                    }
                }
                let is_out = *fails > 0 && *passes < RISE;
                if is_out {
                    out.insert(addr);
                }
                let backend = &targets[&addr];
                if is_out != was_out {
                    match &result {
                        Err(e) => {
                            tracing::warn!(%addr, backend = %backend, error = %e, "http: upstream failed its health check; out")
                        }
                        Ok(()) => {
                            tracing::info!(%addr, backend = %backend, "http: upstream passes its health checks again; back in")
                        }
                    }
                }
                let port = addr.port().to_string();
                self.gauge.with_label_values(&[backend.as_str(), port.as_str()]).set(i64::from(!is_out));
            }
            if out != **self.out.load() {
                self.out.store(Arc::new(out));
            }
        }
    }
}

/// Every upstream address of the table's sites (backends not marked down),
/// with its backend's name.
fn targets(table: &Table) -> HashMap<SocketAddr, String> {
    let snapshot = table.load();
    let mut all = HashMap::new();
    for site in snapshot.sites() {
        for b in site.backends.iter() {
            let Some(backend) = snapshot.backend(&b.backend) else { continue };
            if backend.state == BackendState::Down {
                continue;
            }
            if let Some(ip) = super::router::upstream_ip(backend) {
                all.entry(SocketAddr::new(ip, b.port)).or_insert_with(|| backend.name.to_string());
            }
        }
    }
    all
}

async fn probe(addr: SocketAddr, backend: &str, settings: &HealthSettings) -> Result<(), String> {
    let attempt = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let Probe::Http { path } = &settings.probe else { return Ok(()) };
        let req = format!("GET {path} HTTP/1.0\r\nHost: {backend}\r\nUser-Agent: edge-health-check\r\n\r\n");
        conn.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).await.map_err(|e| format!("no status line: {e}"))?;
        let status: u16 = std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|_| head.starts_with(b"HTTP/1."))
            .ok_or("not an HTTP response")?;
        if status >= 500 {
            return Err(format!("status {status}"));
        }
        Ok(())
    };
    match tokio::time::timeout(settings.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", settings.timeout.as_millis())),
    }
}
