//! TLS on the HTTPS listeners: the rustls configuration and the handshake.
//!
//! Pingora's `TlsSettings` builds rustls's `ServerConfig` itself and has no
//! setting for session resumption, so its listeners resumed only from
//! rustls's default cache of 256 sessions, with no tickets. The edge
//! therefore listens on the HTTPS addresses as plain TCP and does the
//! handshake itself ([`Tls::accept`], called by
//! [`super::connections::Guarded`]), with Pingora's own acceptor: its
//! callbacks (the handshake count, the SNI for the 421 check) and its
//! stream type (ALPN, the TLS digest) are kept; only the rustls
//! configuration is the edge's:
//!
//! - TLS 1.2 and 1.3 with ring's AEAD suites, certificates by SNI
//!   ([`super::certs::Resolver`]), `h2` and `http/1.1` by ALPN;
//! - stateless session tickets (`tls_session_tickets`), sealed with a key
//!   that rotates every 6 hours. The key lives in this process only: after
//!   a restart or a graceful upgrade, clients make one full handshake;
//! - a session cache of `tls_session_cache` entries for session IDs;
//! - on `tls_listen_no_resumption`, neither: every handshake is full.
//!
//! Doing the handshake here also puts a deadline on it (the header
//! deadline, or 60 s without one) and counts the ones that fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::listeners::{PreTlsProcess, TlsAcceptCallbacks};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Ssl, Stream, ALPN};
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;

use super::acme::challenge::TlsAlpnChallenges;
use super::batched_writes::Batched;
use super::certs::{Certs, Resolver};

/// How long a handshake may take when there is no header deadline.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(60);

/// Session resumption on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    /// Stateless tickets.
    pub tickets: bool,
    /// Entries of the session cache; 0 keeps none.
    pub cache: usize,
}

impl Resumption {
    /// Every handshake a full one.
    pub const OFF: Resumption = Resumption { tickets: false, cache: 0 };
}

/// The rustls configuration of an HTTPS listener.
pub fn server_config(certs: &Arc<Certs>, h2: bool, resumption: Resumption) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(Arc::clone(certs))));
    config.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { Vec::new() };
    config.session_storage = match resumption.cache {
        0 => Arc::new(NoServerSessionStorage {}) as Arc<dyn StoresServerSessions>,
        n => ServerSessionMemoryCache::new(n),
    };
    if resumption.tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tls session tickets: {e}"))?;
    }
    if !resumption.tickets && resumption.cache == 0 {
        // No TLS 1.3 ticket could be redeemed: send none.
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// The HTTPS listeners' handshakes.
pub struct Tls {
    /// The HTTPS listen addresses, and beside each the acceptor of its
    /// kind (one for `tls_listen`, one for `tls_listen_no_resumption`).
    addrs: Vec<SocketAddr>,
    acceptors: Vec<Arc<Acceptor>>,
    /// TLS-ALPN-01 validation connections, answered before the handshake.
    challenges: Option<TlsAlpnChallenges>,
    deadline: Duration,
    /// `edge_http_tls_handshake_errors_total`.
    errors: prometheus::IntCounter,
}

impl Tls {
    /// `kinds`: listen addresses with the configuration they share.
    /// `callbacks` makes the callbacks of one acceptor (Pingora's acceptor
    /// owns them).
    pub fn new(
        kinds: Vec<(Vec<SocketAddr>, ServerConfig)>,
        mut callbacks: impl FnMut() -> TlsAcceptCallbacks,
        challenges: Option<TlsAlpnChallenges>,
        header_timeout: Option<Duration>,
        errors: prometheus::IntCounter,
    ) -> Result<Tls, String> {
        let (mut addrs, mut acceptors) = (Vec::new(), Vec::new());
        for (listen, config) in kinds {
            // Pingora's acceptor, for its callbacks and its stream type,
            // with the edge's rustls configuration in place of the one it
            // builds (which needs a resolver to build at all: the same).
            let mut settings = TlsSettings::with_callbacks(callbacks()).map_err(|e| e.to_string())?;
            settings.set_cert_resolver(Arc::clone(&config.cert_resolver));
            let mut acceptor = settings.build();
            acceptor.acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let acceptor = Arc::new(acceptor);
            acceptors.extend(listen.iter().map(|_| Arc::clone(&acceptor)));
            addrs.extend(listen);
        }
        Ok(Tls { addrs, acceptors, challenges, deadline: header_timeout.unwrap_or(HANDSHAKE_WAIT), errors })
    }

    /// The acceptor of the HTTPS listener a connection came in on, if it
    /// came in on one.
    pub fn listener(&self, local: Option<SocketAddr>) -> Option<&Acceptor> {
        listener_index(&self.addrs, local?).map(|i| &*self.acceptors[i])
    }

    /// Answers a TLS-ALPN-01 validation (the connection then ends), or
    /// makes the handshake. `None`: the connection is over.
    pub async fn accept(&self, acceptor: &Acceptor, stream: Stream, client: Option<SocketAddr>) -> Option<Stream> {
        // Pingora's plain listeners hand over their own stream type, the
        // one its acceptor and the challenge step take.
        let mut l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                tracing::error!("https: a connection of an unexpected stream type; closed");
                return None;
            }
        };
        if let Some(challenges) = &self.challenges {
            challenges.process(&mut l4).await.ok()?;
        }
        // Under the TLS layer: an HTTP/2 connection's writes go out once a
        // poll of its task (`batched_writes`).
        let (batched, batching) = Batched::new(Box::new(l4));
        match tokio::time::timeout(self.deadline, acceptor.tls_handshake(batched)).await {
            Ok(Ok(tls)) => {
                if matches!(tls.selected_alpn_proto(), Some(ALPN::H2)) {
                    batching.on();
                }
                Some(Box::new(tls))
            }
            Ok(Err(e)) => {
                self.errors.inc();
                tracing::debug!(client = ?client, error = %e, "https: handshake failed");
                None
            }
            Err(_) => {
                self.errors.inc();
                tracing::debug!(client = ?client, "https: handshake not done within {:?}; closed", self.deadline);
                None
            }
        }
    }
}

/// Which listen address a connection to `local` came in on: the same
/// address, or else one on the same port with an unspecified IP
/// (`0.0.0.0`, `[::]`, which also takes IPv4 clients as mapped
/// addresses).
fn listener_index(listeners: &[SocketAddr], local: SocketAddr) -> Option<usize> {
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    listeners
        .iter()
        .position(|a| *a == local)
        .or_else(|| listeners.iter().position(|a| a.port() == local.port() && a.ip().is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_connection_finds_its_listener_by_address_then_by_port() {
        let listeners = [addr("127.0.0.1:8443"), addr("0.0.0.0:9443"), addr("[::]:7443"), addr("10.0.0.2:8443")];
        let find = |local: &str| listener_index(&listeners, addr(local));
        assert_eq!(find("127.0.0.1:8443"), Some(0));
        assert_eq!(find("10.0.0.2:8443"), Some(3), "same port, another address");
        assert_eq!(find("10.0.0.3:8443"), None, "a plain listener's address");
        assert_eq!(find("192.0.2.7:9443"), Some(1), "any address of 0.0.0.0");
        assert_eq!(find("[::1]:7443"), Some(2));
        assert_eq!(find("[::ffff:127.0.0.1]:9443"), Some(1), "a mapped IPv4 address");
        assert_eq!(find("[::ffff:192.0.2.7]:7443"), Some(2), "IPv4 on a dual-stack [::]");
        assert_eq!(find("127.0.0.1:8080"), None);
    }

    fn certs() -> Arc<Certs> {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let text = format!("{}{}", made.cert.pem(), made.signing_key.serialize_pem());
        std::fs::write(dir.path().join("a.pem"), text).unwrap();
        let metrics = routing_table::TableMetrics::unregistered().unwrap();
        let table = routing_table::Table::open(Box::new(routing_table::MemoryStore::new()), metrics).unwrap();
        Certs::load(dir.path(), None, table).unwrap()
    }

    #[test]
    fn resumption_settings_reach_rustls() {
        let certs = certs();
        let on = server_config(&certs, true, Resumption { tickets: true, cache: 100 }).unwrap();
        assert!(on.ticketer.enabled());
        assert!(on.session_storage.can_cache());
        assert_eq!(on.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(on.send_tls13_tickets > 0);

        let cache_only = server_config(&certs, false, Resumption { tickets: false, cache: 100 }).unwrap();
        assert!(!cache_only.ticketer.enabled());
        assert!(cache_only.session_storage.can_cache());
        assert!(cache_only.alpn_protocols.is_empty());
        assert!(cache_only.send_tls13_tickets > 0, "TLS 1.3 resumes from the cache by its tickets");

        let off = server_config(&certs, true, Resumption::OFF).unwrap();
        assert!(!off.ticketer.enabled());
        assert!(!off.session_storage.can_cache());
        assert_eq!(off.send_tls13_tickets, 0);
    }
}
