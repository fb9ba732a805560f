//! The edge's answers to ACME challenges while an order is being validated:
//!
//! - **HTTP-01**: key authorizations by token, served by the HTTP listener
//!   at `/.well-known/acme-challenge/TOKEN` ([`super::super::service`]).
//! - **TLS-ALPN-01** (RFC 8737): a self-signed certificate carrying the
//!   `acmeIdentifier` extension, presented on the TLS listener to a client
//!   that offers only the `acme-tls/1` protocol. The HTTPS listeners have
//!   one fixed ALPN list, so [`TlsAlpnChallenges`] runs before their
//!   handshake ([`super::super::tls`]): while a challenge is pending it
//!   reads the ClientHello, and either answers the validator itself or
//!   puts the bytes back for the handshake. With no challenge pending it
//!   does nothing.
//! - **DNS-01** (wildcard names): the owner of the TXT record in dnsd's
//!   zone ([`dns01_owner`]); the manager puts it in the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How long the pre-handshake step waits for a ClientHello while a
/// TLS-ALPN-01 challenge is pending; then the handshake goes on.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello larger than this is not read further (it is handed to
/// the handshake as it is).
const HELLO_MAX: usize = 64 * 1024;

/// A TLS-ALPN-01 certificate and its key. (Served through a resolver:
/// rustls's `with_single_cert` parses the certificate with webpki, which
/// refuses the critical `acmeIdentifier` extension.)
#[derive(Debug)]
struct AlpnCert(Arc<CertifiedKey>);

impl ResolvesServerCert for AlpnCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The challenges being validated now.
#[derive(Default)]
pub struct Answers {
    /// HTTP-01 token → key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01 name → certificate.
    tls_alpn01: Mutex<HashMap<String, Arc<AlpnCert>>>,
    /// How many TLS-ALPN-01 certificates are waiting (read on every TLS
    /// connection without the lock).
    tls_alpn01_pending: AtomicUsize,
}

impl Answers {
    /// The key authorization for an HTTP-01 token being validated now.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.lock().get(token).cloned()
    }

    pub fn add_http01(&self, token: &str, key_authorization: &str) {
        self.http01.lock().insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove_http01(&self, token: &str) {
        self.http01.lock().remove(token);
    }

    /// Makes the TLS-ALPN-01 certificate for `name` from the SHA-256 digest
    /// of the key authorization, and serves it until removed.
    pub fn add_tls_alpn01(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let cert = Arc::new(alpn_cert(name, digest)?);
        let mut map = self.tls_alpn01.lock();
        map.insert(name.to_string(), cert);
        self.tls_alpn01_pending.store(map.len(), Ordering::Release);
        Ok(())
    }

    pub fn remove_tls_alpn01(&self, name: &str) {
        let mut map = self.tls_alpn01.lock();
        map.remove(name);
        self.tls_alpn01_pending.store(map.len(), Ordering::Release);
    }

    fn tls_alpn01(&self, name: &str) -> Option<Arc<AlpnCert>> {
        self.tls_alpn01.lock().get(name).cloned()
    }
}

/// The RFC 8737 certificate: self-signed, for `name` only, with the
/// critical `id-pe-acmeIdentifier` extension holding `digest`.
fn alpn_cert(name: &str, digest: &[u8]) -> Result<AlpnCert, String> {
    let err = |e: rcgen::Error| format!("tls-alpn-01 certificate for {name}: {e}");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(AlpnCert(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))))
}

/// The HTTPS listeners' step before their handshake (run by [`super::super::tls::Tls`]
/// when `[http.acme]` uses TLS-ALPN-01).
pub struct TlsAlpnChallenges(pub Arc<Answers>);

#[async_trait]
impl PreTlsProcess for TlsAlpnChallenges {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        if self.0.tls_alpn01_pending.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let (raw, acme_name) = read_client_hello(stream).await;
        stream.rewind(&raw);
        let Some(cert) = acme_name.as_deref().and_then(|n| self.0.tls_alpn01(n)) else {
            return Ok(());
        };
        let name = acme_name.unwrap_or_default();
        let answered = answer(stream, cert).await;
        match &answered {
            Ok(()) => tracing::info!(name = %name, "acme: tls-alpn-01 challenge answered"),
            Err(e) => tracing::warn!(name = %name, error = %e, "acme: tls-alpn-01 validation connection failed"),
        }
        // The validation connection carries no HTTP: it ends here.
        pingora::Error::e_explain(
            pingora::ErrorType::HandshakeError,
            "acme-tls/1 validation connection (RFC 8737), answered by the edge's ACME challenge",
        )
    }
}

/// The TLS handshake of a validation connection, with the challenge
/// certificate and `acme-tls/1`.
async fn answer(stream: &mut L4Stream, cert: Arc<AlpnCert>) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut tls = tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// Reads the ClientHello (rustls's `Acceptor` parses it). Returns every
/// byte read, and the server name when the client offered `acme-tls/1`.
async fn read_client_hello(stream: &mut L4Stream) -> (Vec<u8>, Option<String>) {
    let mut raw = Vec::new();
    let mut acceptor = rustls::server::Acceptor::default();
    let mut buf = [0u8; 4096];
    while raw.len() < HELLO_MAX {
        let n = match tokio::time::timeout(HELLO_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        raw.extend_from_slice(&buf[..n]);
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if acceptor.read_tls(&mut chunk).is_err() {
                return (raw, None);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let acme = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
                let name = hello.server_name().map(str::to_ascii_lowercase);
                return (raw, name.filter(|_| acme));
            }
            Err(_) => break,
        }
    }
    (raw, None)
}

/// The owner, relative to dnsd's `zone`, of the DNS-01 TXT record for
/// `host` (`B` or `*.B`): `_acme-challenge.B`, when that lies in the zone.
pub fn dns01_owner(host: &str, zone: &str) -> Option<String> {
    let base = host.strip_prefix("*.").unwrap_or(host).trim_end_matches('.').to_ascii_lowercase();
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    if base == zone {
        return Some("_acme-challenge".to_string());
    }
    let relative = base.strip_suffix(&zone)?.strip_suffix('.')?;
    (!relative.is_empty()).then(|| format!("_acme-challenge.{relative}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns01_owners_lie_in_the_zone() {
        let z = "edge.test";
        assert_eq!(dns01_owner("*.shop.edge.test", z).as_deref(), Some("_acme-challenge.shop"));
        assert_eq!(dns01_owner("shop.edge.test", z).as_deref(), Some("_acme-challenge.shop"));
        assert_eq!(dns01_owner("*.edge.test", "edge.test.").as_deref(), Some("_acme-challenge"));
        assert_eq!(dns01_owner("*.a.b.EDGE.test", z).as_deref(), Some("_acme-challenge.a.b"));
        assert_eq!(dns01_owner("*.example.org", z), None, "not our zone");
        assert_eq!(dns01_owner("*.notedge.test", z), None, "a suffix, not a subdomain");
    }

    #[test]
    fn the_tls_alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let made = alpn_cert("shop.test", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&made.0.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes: tag 0x04, length 0x20, the digest.
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest[..]].concat());
        let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        assert_eq!(format!("{names:?}"), "[DNSName(\"shop.test\")]");
    }

    #[test]
    fn answers_count_the_pending_tls_alpn_certificates() {
        let a = Answers::default();
        a.add_tls_alpn01("a.test", &[1; 32]).unwrap();
        a.add_tls_alpn01("b.test", &[2; 32]).unwrap();
        assert_eq!(a.tls_alpn01_pending.load(Ordering::Acquire), 2);
        a.remove_tls_alpn01("a.test");
        assert!(a.tls_alpn01("a.test").is_none() && a.tls_alpn01("b.test").is_some());
        a.remove_tls_alpn01("b.test");
        assert_eq!(a.tls_alpn01_pending.load(Ordering::Acquire), 0);
        a.add_http01("tok", "tok.thumb");
        assert_eq!(a.http01("tok").as_deref(), Some("tok.thumb"));
        a.remove_http01("tok");
        assert_eq!(a.http01("tok"), None);
    }
}
