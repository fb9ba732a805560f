//! The edge as an SSH client of a backend: connect, check the pinned host
//! key, then one of the login methods; the handle then opens one upstream
//! channel per client channel.

use std::net::SocketAddr;
use std::sync::Arc;

use russh::client::{self, Handle};
use russh::keys::PublicKey;
use russh::keys::PublicKeyOrCertificate;

use super::known_hosts::Verdict;
use super::{Settings, Shared};

/// Ciphers the edge asks backends for, AES-GCM first: with AES-NI (ring) it
/// costs the edge less CPU per byte than ChaCha20-Poly1305, and the edge
/// decrypts and encrypts every byte twice. All are modern AEAD or ETM.
const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

pub fn client_config(settings: &Settings) -> client::Config {
    client::Config {
        preferred: russh::Preferred { cipher: std::borrow::Cow::Borrowed(UPSTREAM_CIPHERS), ..Default::default() },
        inactivity_timeout: Some(settings.idle_timeout),
        keepalive_interval: Some(std::time::Duration::from_secs(30)),
        nodelay: true,
        ..client::Config::default()
    }
}

/// Checks the backend's host key against the pins.
pub struct Checker {
    shared: Arc<Shared>,
    backend: String,
    addr: SocketAddr,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key: PublicKey = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A host certificate: pin the key it certifies.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        match self.shared.known.check(&self.backend, &key) {
            Verdict::Known => Ok(true),
            Verdict::Pinned => {
                tracing::info!(backend = %self.backend, addr = %self.addr, "pinned a new backend host key (trust on first use)");
                Ok(true)
            }
            Verdict::Unknown => {
                tracing::error!(backend = %self.backend, addr = %self.addr, "backend host key not in known_hosts, and trust_on_first_use is off");
                Ok(false)
            }
            Verdict::Mismatch => {
                tracing::error!(backend = %self.backend, addr = %self.addr, "backend host key differs from the pinned one: refusing (see docs/ssh.md)");
                Ok(false)
            }
        }
    }
}

pub type Upstream = Handle<Checker>;

/// Connects to `backend` at `addr` and completes key exchange.
pub async fn connect(shared: &Arc<Shared>, backend: &str, addr: SocketAddr) -> Result<Upstream, String> {
    let checker = Checker { shared: shared.clone(), backend: backend.to_string(), addr };
    let timeout = shared.settings.upstream_connect_timeout;
    let connecting = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        client::connect_stream(shared.client.clone(), stream, checker).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(r) => r,
        Err(_) => Err(format!("no SSH handshake in {} ms", timeout.as_millis())),
    }
}
