//! The HTTP proxy (issue #3, first part): Pingora serving the sites of the
//! shared table over plain HTTP/1.1. Routing, upstream choice and the
//! protection pages are in [`router`] (pure); the Pingora side is
//! [`service`]. Pingora runs its own runtime on a thread of its own, and
//! stops when the edge's shutdown channel turns true.

pub mod acme;
pub mod batched_writes;
pub mod cache;
pub mod certs;
pub mod config;
pub mod connections;
pub mod h2_timeouts;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod proxy_protocol;
pub mod quick_ack;
pub mod router;
pub mod service;
pub mod tls;

use std::any::Any;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use routing_table::Table;
use tokio::sync::watch;

pub use cache::Cache;
pub use certs::Certs;
pub use config::{HttpConfig, Settings};
pub use metrics::HttpMetrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("http listen {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("http: {0}")]
    Thread(std::io::Error),
    #[error("https certificates: {0}")]
    Certs(String),
}

/// The running HTTP proxy.
pub struct Http {
    thread: std::thread::JoinHandle<()>,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    certs: Option<Arc<Certs>>,
    cache: Option<Arc<Cache>>,
    acme: Option<Arc<acme::Acme>>,
}

impl Http {
    /// Starts Pingora on its own thread. Each listen address is tried first,
    /// so a port in use is an error here rather than in Pingora's log.
    pub fn start(
        settings: Settings,
        data_dir: &Path,
        table: Table,
        mut metrics: HttpMetrics,
        registry: &prometheus::Registry,
        shutdown: watch::Receiver<bool>,
        upgrade: bool,
    ) -> Result<Http, StartError> {
        let addrs = settings.listen.clone();
        let tls_addrs: Vec<SocketAddr> =
            settings.tls_listen.iter().chain(&settings.tls_listen_no_resumption).copied().collect();
        if !upgrade {
            for &addr in addrs.iter().chain(&tls_addrs) {
                std::net::TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, source })?;
            }
        }
        let certs = if tls_addrs.is_empty() { None } else { Some(load_certs(&settings, data_dir, &table)?) };
        let upgrade_sock = data_dir.join("http").join("upgrade.sock");
        std::fs::create_dir_all(data_dir.join("http")).map_err(StartError::Thread)?;
        let conf = ServerConf {
            threads: settings.threads,
            // The listener hand-off of a graceful upgrade (SIGQUIT to the
            // old edge, `edge run --upgrade` for the new one): the new one
            // waits up to 30 s for the old one's listeners.
            upgrade_sock: upgrade_sock.display().to_string(),
            upgrade_sock_connect_accept_max_retries: Some(30),
            // On shutdown: stop accepting at once, then give requests in
            // flight `shutdown_drain_secs` (Pingora's grace period is a
            // fixed wait, after which its runtime cancels what is left).
            grace_period_seconds: Some(settings.shutdown_drain_secs),
            graceful_shutdown_timeout_seconds: Some(1),
            // One single-threaded runtime per worker thread, as nginx and
            // HAProxy run: +4-5% req/s and -4% CPU a request against the
            // work-stealing runtime (HTTP/1.1 1 KiB uncached, one thread,
            // docs/benchmarks.md). A connection stays on its thread.
            work_stealing: false,
            ..ServerConf::default()
        };
        let opt = pingora::server::configuration::Opt { upgrade, ..Default::default() };
        let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
        if upgrade {
            tracing::info!(sock = %upgrade_sock.display(), "upgrade: waiting for the running edge's HTTP listeners (send it SIGQUIT)");
        }
        // With `upgrade`, this waits for the old process's listeners (it
        // exits the process if none come within 30 s).
        tokio::task::block_in_place(|| server.bootstrap());
        let tls_count = metrics.tls_handshakes.clone();
        let tls_errors = metrics.tls_handshake_errors.clone();
        let cache = (settings.cache_bytes > 0)
            .then(|| Cache::new(settings.cache_bytes, settings.cache_max_object_bytes, settings.cache_lock_timeout));
        let health = health::Health::new(metrics.upstream_healthy.clone());
        tokio::spawn(Arc::clone(&health).run(settings.health.clone(), table.clone(), shutdown.clone()));
        let acme = match (&settings.acme, &certs) {
            (Some(a), Some(certs)) => {
                let acme = acme::Acme::new(a.clone(), data_dir, Arc::clone(certs), table.clone(), registry)
                    .map_err(|e| StartError::Certs(e.to_string()))?;
                tokio::spawn(Arc::clone(&acme).run(shutdown.clone()));
                Some(acme)
            }
            _ => None,
        };
        let limiter = limits::Limiter::new(settings.under_attack);
        let (per_ip, header_timeout) = (settings.max_connections_per_ip, settings.header_timeout);
        let tls = match &certs {
            Some(certs) => {
                let resumption =
                    tls::Resumption { tickets: settings.tls_session_tickets, cache: settings.tls_session_cache };
                let mut kinds = Vec::new();
                for (listen, resumption) in
                    [(&settings.tls_listen, resumption), (&settings.tls_listen_no_resumption, tls::Resumption::OFF)]
                {
                    if !listen.is_empty() {
                        let config = tls::server_config(certs, settings.h2, resumption).map_err(StartError::Certs)?;
                        kinds.push((listen.clone(), config));
                    }
                }
                // TLS-ALPN-01 validation connections are answered before
                // the handshake.
                let challenges = acme
                    .as_ref()
                    .filter(|a| a.uses_tls_alpn())
                    .map(|a| acme::challenge::TlsAlpnChallenges(Arc::clone(a.answers())));
                let callbacks = || -> pingora::listeners::TlsAcceptCallbacks {
                    Box::new(Handshakes(Arc::clone(certs), tls_count.clone()))
                };
                Some(
                    tls::Tls::new(kinds, callbacks, challenges, header_timeout, tls_errors)
                        .map_err(StartError::Certs)?,
                )
            }
            None => None,
        };
        let limited = metrics.limited.clone();
        metrics.name_sites(settings.metrics_sites.iter().map(String::as_str));
        let shared = Arc::new(service::Shared {
            settings,
            table,
            metrics,
            cache: cache.clone(),
            health,
            limiter,
            acme: acme.clone(),
        });
        let (http2_idle_timeout, body_timeout) = (shared.settings.http2_idle_timeout, shared.settings.body_timeout);
        let mut app = pingora::proxy::http_proxy(&server.configuration, service::Proxy { shared });
        // Without it, an HTTP/2 connection with nothing in flight stays
        // open until the client closes it.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(http2_idle_timeout);
        app.server_options = Some(options);
        let guarded = connections::Guarded::new(app, per_ip, header_timeout, body_timeout, limited, tls);
        let mut proxy = pingora::services::listening::Service::new("edge http".to_string(), guarded);
        // The HTTPS listeners too are plain TCP to Pingora: the handshake is
        // the edge's (`tls.rs`).
        for addr in addrs.iter().chain(&tls_addrs) {
            proxy.add_tcp(&addr.to_string());
        }
        if let Some(certs) = &certs {
            tokio::spawn(refresh_certs(Arc::clone(certs), shutdown.clone()));
        }
        server.add_service(proxy);
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || server.run(RunArgs { shutdown_signal: Box::new(Stop(shutdown)) }))
            .map_err(StartError::Thread)?;
        Ok(Http { thread, addrs, tls_addrs, certs, cache, acme })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The ACME manager, with `[http.acme]`.
    pub fn acme(&self) -> Option<&Arc<acme::Acme>> {
        self.acme.as_ref()
    }

    /// The cache, unless `cache_bytes` is 0.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    /// The HTTPS certificates, when there are HTTPS listeners.
    pub fn certs(&self) -> Option<&Arc<Certs>> {
        self.certs.as_ref()
    }

    /// Waits for Pingora to finish (after the shutdown channel turned true).
    pub async fn stopped(self) {
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Pingora's shutdown signal: the edge's own (SIGTERM and SIGINT reach
/// `signals.rs`, which turns the channel true).
struct Stop(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        if crate::signals::upgrading() {
            // SIGQUIT: send the listeners to the new process, keep
            // accepting alongside it for a few seconds, then drain.
            ShutdownSignal::GracefulUpgrade
        } else {
            ShutdownSignal::GracefulTerminate
        }
    }
}

/// Reads the certificate directory; on a first start without any
/// certificate, makes one signed by a local CA (`data_dir/http/ca.pem`).
fn load_certs(settings: &Settings, data_dir: &Path, table: &Table) -> Result<Arc<Certs>, StartError> {
    let dir = data_dir.join(&settings.cert_dir);
    let certs = Certs::load(&dir, settings.default_cert.clone(), table.clone()).map_err(StartError::Certs)?;
    if certs.list().is_empty() {
        if settings.self_signed_names.is_empty() {
            return Err(StartError::Certs(format!(
                "{}: no certificate, and http.self_signed_names is empty",
                dir.display()
            )));
        }
        let ca = certs::make_self_signed(&data_dir.join("http"), &dir, "self-signed", &settings.self_signed_names)
            .map_err(StartError::Certs)?;
        certs.refresh().map_err(StartError::Certs)?;
        tracing::warn!(
            dir = %dir.display(), ca = %ca.display(), names = ?settings.self_signed_names,
            "https: no certificate; made one signed by a local CA (curl --cacert CA)"
        );
    }
    Ok(certs)
}

/// Re-reads the certificate directory every 2 s until shutdown.
async fn refresh_certs(certs: Arc<Certs>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let certs = Arc::clone(&certs);
        match tokio::task::spawn_blocking(move || certs.refresh()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "https: certificate directory not read"),
            Ok(Ok(n)) if n > 0 => tracing::info!(changed = n, "https: certificates reloaded"),
            _ => {}
        }
    }
}

/// Keeps with each TLS connection the SNI and the certificate it was
/// given, for the 421 check of its requests.
struct Handshakes(Arc<Certs>, prometheus::IntCounter);

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        self.1.inc();
        let sni = tls.server_name().map(|s| s.to_ascii_lowercase());
        let cert = self.0.choose(sni.as_deref());
        Some(Arc::new(certs::Handshake { sni, cert }))
    }
}
