//! The HTTP proxy (issue #3, first part): Pingora serving the sites of the
//! shared table over plain HTTP/1.1. Routing, upstream choice and the
//! protection pages are in [`router`] (pure); the Pingora side is
//! [`service`]. Pingora runs its own runtime on a thread of its own, and
//! stops when the edge's shutdown channel turns true.

pub mod config;
pub mod metrics;
pub mod router;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use routing_table::Table;
use tokio::sync::watch;

pub use config::{HttpConfig, Settings};
pub use metrics::HttpMetrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("http listen {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("http: {0}")]
    Thread(std::io::Error),
}

/// The running HTTP proxy.
pub struct Http {
    thread: std::thread::JoinHandle<()>,
    addrs: Vec<SocketAddr>,
}

impl Http {
    /// Starts Pingora on its own thread. Each listen address is tried first,
    /// so a port in use is an error here rather than in Pingora's log.
    pub fn start(
        settings: Settings,
        table: Table,
        metrics: HttpMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Http, StartError> {
        for &addr in &settings.listen {
            std::net::TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, source })?;
        }
        let conf = ServerConf {
            threads: settings.threads,
            // On shutdown: stop accepting at once, let requests in flight
            // finish for up to 10 s.
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(10),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let addrs = settings.listen.clone();
        let shared = Arc::new(service::Shared { settings, table, metrics });
        let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, service::Proxy { shared });
        for addr in &addrs {
            proxy.add_tcp(&addr.to_string());
        }
        server.add_service(proxy);
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || server.run(RunArgs { shutdown_signal: Box::new(Stop(shutdown)) }))
            .map_err(StartError::Thread)?;
        Ok(Http { thread, addrs })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
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
        ShutdownSignal::GracefulTerminate
    }
}
