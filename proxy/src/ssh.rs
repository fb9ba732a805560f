//! The SFTP/SSH forwarder: one public SSH endpoint; each login goes to the
//! backend that holds the user's files, as the table's `sftp_login` says.
//!
//! The edge completes key exchange with its own host keys (routing needs
//! the user name, which comes after), authenticates the user against the
//! backend, and then relays channels both ways:
//! - password and keyboard-interactive logins are passed through: the
//!   backend's verdict is the client's (`ssh/session.rs`);
//! - a public key is checked at the edge against the login's
//!   `authorized_keys`; the edge then logs in upstream with a short-lived
//!   OpenSSH user certificate signed by its user CA ([`keys`]), which the
//!   backends trust (`TrustedUserCAKeys`, docs/ssh.md);
//! - backend host keys are pinned per backend ([`known_hosts`]).
//!
//! A session keeps the backend chosen at login to its end; `--kick` after a
//! move closes it ([`crate::sessions`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use routing_table::Table;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::sessions::Sessions;

pub mod keys;
pub mod known_hosts;

pub mod metrics;
mod relay;
mod session;
mod upstream;

pub use metrics::SshMetrics;

/// `[ssh]` in `edge.toml`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    #[serde(default = "default_listen")]
    listen: Vec<SocketAddr>,
    #[serde(default = "default_upstream_port")]
    upstream_port: u16,
    #[serde(default = "default_login_grace")]
    login_grace_secs: u64,
    #[serde(default)]
    banner: Option<String>,
    #[serde(default = "default_per_ip")]
    max_connections_per_ip: usize,
    #[serde(default = "default_failed")]
    max_failed_logins_per_ip_per_minute: u32,
    #[serde(default = "default_true")]
    trust_on_first_use: bool,
    #[serde(default = "default_connect_timeout")]
    upstream_connect_timeout_ms: u64,
    #[serde(default = "default_cert_validity")]
    certificate_validity_secs: u64,
    #[serde(default = "default_idle")]
    idle_timeout_secs: u64,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 2222))]
}
fn default_upstream_port() -> u16 {
    22
}
fn default_login_grace() -> u64 {
    30
}
fn default_per_ip() -> usize {
    20
}
fn default_failed() -> u32 {
    10
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> u64 {
    5000
}
fn default_cert_validity() -> u64 {
    300
}
fn default_idle() -> u64 {
    3600
}

/// Checked `[ssh]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    /// Port of sshd on every backend.
    pub upstream_port: u16,
    /// Time to log in, from the TCP connect.
    pub login_grace: Duration,
    pub banner: Option<String>,
    pub max_connections_per_ip: usize,
    pub max_failed_logins_per_ip_per_minute: u32,
    /// Pin a backend's host key the first time it is seen; when false,
    /// unknown backends are refused until their key is in `known_hosts`.
    pub trust_on_first_use: bool,
    pub upstream_connect_timeout: Duration,
    /// Lifetime of the user certificates the edge signs for upstream logins.
    pub certificate_validity: Duration,
    /// A logged-in connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
}

impl SshConfig {
    /// Checks the section; errors name the key.
    pub fn validate(self) -> Result<Settings, (&'static str, String)> {
        if self.listen.is_empty() {
            return Err(("ssh.listen", "needs at least one address".into()));
        }
        if self.upstream_port == 0 {
            return Err(("ssh.upstream_port", "must not be 0".into()));
        }
        if !(1..=600).contains(&self.login_grace_secs) {
            return Err(("ssh.login_grace_secs", "must be between 1 and 600".into()));
        }
        if self.max_connections_per_ip == 0 {
            return Err(("ssh.max_connections_per_ip", "must be at least 1".into()));
        }
        if self.max_failed_logins_per_ip_per_minute == 0 {
            return Err(("ssh.max_failed_logins_per_ip_per_minute", "must be at least 1".into()));
        }
        if !(100..=60_000).contains(&self.upstream_connect_timeout_ms) {
            return Err(("ssh.upstream_connect_timeout_ms", "must be between 100 and 60000".into()));
        }
        if !(30..=86_400).contains(&self.certificate_validity_secs) {
            return Err(("ssh.certificate_validity_secs", "must be between 30 and 86400".into()));
        }
        if self.idle_timeout_secs < 60 {
            return Err(("ssh.idle_timeout_secs", "must be at least 60".into()));
        }
        Ok(Settings {
            listen: self.listen,
            upstream_port: self.upstream_port,
            login_grace: Duration::from_secs(self.login_grace_secs),
            banner: self.banner.filter(|b| !b.is_empty()),
            max_connections_per_ip: self.max_connections_per_ip,
            max_failed_logins_per_ip_per_minute: self.max_failed_logins_per_ip_per_minute,
            trust_on_first_use: self.trust_on_first_use,
            upstream_connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
            certificate_validity: Duration::from_secs(self.certificate_validity_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
        })
    }
}

/// Could not start the SSH listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("ssh listener {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("ssh keys in {dir}: {reason}")]
    Keys { dir: PathBuf, reason: String },
}

/// What every connection shares.
pub(crate) struct Shared {
    pub settings: Settings,
    pub server: Arc<russh::server::Config>,
    pub client: Arc<russh::client::Config>,
    pub table: Table,
    pub keys: keys::EdgeKeys,
    pub known: known_hosts::KnownHosts,
    pub limits: crate::limits::Limits,
    pub sessions: Arc<Sessions>,
    pub metrics: SshMetrics,
}

impl Shared {
    /// Loads (or makes) the keys and pins under `dir`, and the russh
    /// configurations, for `settings`.
    fn new(
        settings: Settings,
        dir: &Path,
        table: Table,
        sessions: Arc<Sessions>,
        metrics: SshMetrics,
    ) -> Result<Shared, BindError> {
        let keys_err = |reason: String| BindError::Keys { dir: dir.into(), reason };
        let keys = keys::EdgeKeys::load_or_create(dir).map_err(keys_err)?;
        let known =
            known_hosts::KnownHosts::open(&dir.join("known_hosts"), settings.trust_on_first_use).map_err(keys_err)?;
        let server = Arc::new(session::server_config(&settings, &keys));
        let client = Arc::new(upstream::client_config(&settings));
        let limits =
            crate::limits::Limits::new(settings.max_connections_per_ip, settings.max_failed_logins_per_ip_per_minute);
        Ok(Shared { settings, server, client, table, keys, known, limits, sessions, metrics })
    }
}

/// The bound SSH listeners.
pub struct Ssh {
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
}

impl Ssh {
    /// Loads (or makes, on a first start) the keys under `data_dir/ssh` and
    /// binds every listen address.
    pub async fn bind(
        settings: Settings,
        data_dir: &Path,
        table: Table,
        sessions: Arc<Sessions>,
        metrics: SshMetrics,
    ) -> Result<Ssh, BindError> {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for addr in &settings.listen {
            let l = TcpListener::bind(addr).await.map_err(|source| BindError::Listen { addr: *addr, source })?;
            addrs.push(l.local_addr().map_err(|source| BindError::Listen { addr: *addr, source })?);
            listeners.push(l);
        }
        let shared = Shared::new(settings, &data_dir.join("ssh"), table, sessions, metrics)?;
        Ok(Ssh { listeners, addrs, shared: Arc::new(shared) })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Accepts until `shutdown`; open sessions are left to end (or be
    /// killed with the process).
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for listener in self.listeners {
            let (shared, mut stop) = (self.shared.clone(), shutdown.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                tokio::spawn(session::serve_connection(shared.clone(), stream, peer));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "ssh accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        _ = crate::signals::stopped(&mut stop) => break,
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Feeds raw client bytes to the SSH server as one connection would, with
/// the real handler and an empty table: the `ssh_preauth` fuzz target.
pub struct Harness {
    shared: Arc<Shared>,
}

impl Harness {
    /// Keys are made (once) under `dir`.
    pub fn new(dir: &Path) -> Result<Harness, BindError> {
        let settings = serde_json::from_str::<SshConfig>("{}")
            .map_err(|e| BindError::Keys { dir: dir.into(), reason: e.to_string() })?
            .validate()
            .map_err(|(k, r)| BindError::Keys { dir: dir.into(), reason: format!("{k}: {r}") })?;
        let keys_err = |reason: String| BindError::Keys { dir: dir.into(), reason };
        let settings = Settings {
            trust_on_first_use: false,
            max_connections_per_ip: 1_000_000,
            max_failed_logins_per_ip_per_minute: 1_000_000,
            ..settings
        };
        let store = Box::new(routing_table::MemoryStore::new());
        let metrics = routing_table::TableMetrics::unregistered().map_err(|e| keys_err(e.to_string()))?;
        let table = Table::open(store, metrics).map_err(|e| keys_err(e.to_string()))?;
        let metrics = SshMetrics::unregistered().map_err(|e| keys_err(e.to_string()))?;
        let shared = Shared::new(settings, dir, table, Sessions::new(), metrics)?;
        Ok(Harness { shared: Arc::new(shared) })
    }

    /// Sends `input` then EOF, and returns how many bytes the server wrote
    /// before the session ended, or `usize::MAX` if it had not ended 2 s
    /// later.
    pub async fn feed(&self, input: &[u8]) -> usize {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
        let task = tokio::spawn(session::serve_connection(self.shared.clone(), server, peer));
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            let _ = to_server.write_all(&input).await;
            let _ = to_server.shutdown().await;
        });
        let talk = async {
            let mut n = 0;
            let mut buf = [0u8; 16 * 1024];
            while let Ok(k) = from_server.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                n += k;
            }
            n
        };
        // The session must end by itself (its russh task included), so
        // that nothing it holds outlives the connection.
        let done = async {
            let n = talk.await;
            let _ = task.await;
            n
        };
        let n = tokio::time::timeout(Duration::from_secs(2), done).await.unwrap_or(usize::MAX);
        writer.abort();
        n
    }
}
