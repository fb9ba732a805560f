//! The mail forwarders: IMAP, POP3, SMTP submission and inbound MX. Each
//! mailbox login goes to the backend the table's `mail_login` names, and
//! each inbound recipient to the one its `mail_domain` names.
//!
//! The edge terminates TLS with the mail certificate ([`tls`]), answers
//! the dialogue before login itself (the parsers in [`parse`] are pure
//! functions), asks the auth plug-in ([`auth`]), connects to the backend
//! ([`upstream`]), passes the client's address on, replays the login, and
//! then relays bytes both ways without parsing them (`relay.rs`). MX is
//! parsed to its end: recipients pick the backend, DATA is relayed in a
//! canonical form (`parse/data.rs`).
//!
//! A session keeps the backend chosen at login; moves with `--kick` close
//! it and `--hold` delays new logins ([`crate::sessions`]). See
//! docs/mail.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use routing_table::{Backend, BackendState, Table};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::limits::Limits;
use crate::sessions::Sessions;

pub mod auth;
pub mod config;
mod imap;
mod io;
pub mod metrics;
pub mod parse;
mod pop3;
mod relay;
mod smtp;
pub mod tls;
pub mod upstream;

pub use config::{MailConfig, Settings};
pub use metrics::MailMetrics;

use config::{Listen, Protocol};
use io::{Conn, LineError, Stream};
use parse::sasl::Credentials;

/// Could not start the mail listeners.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("mail listener {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("mail TLS: {0}")]
    Tls(String),
    #[error("mail auth: {0}")]
    Auth(String),
}

/// What every connection shares.
pub(crate) struct Shared {
    pub settings: Settings,
    /// The edge's certificate; swapped by [`MailTls::reload`] on SIGHUP.
    server_tls: ArcSwap<rustls::ServerConfig>,
    /// Where a self-signed certificate is kept when none is configured.
    tls_dir: PathBuf,
    /// Client TLS towards backends: by backend name where its CA differs,
    /// else `default_tls`.
    tls_by_backend: HashMap<String, Arc<rustls::ClientConfig>>,
    default_tls: Arc<rustls::ClientConfig>,
    pub table: Table,
    pub sessions: Arc<Sessions>,
    pub limits: Limits,
    pub metrics: MailMetrics,
    pub auth: Box<dyn auth::AuthPlugin>,
}

impl Shared {
    fn new(
        settings: Settings,
        dir: &Path,
        table: Table,
        sessions: Arc<Sessions>,
        metrics: MailMetrics,
    ) -> Result<Shared, BindError> {
        let server = server_tls(&settings, dir).map_err(BindError::Tls)?;
        let default_tls = tls::client_config(settings.upstream.ca_file.as_deref()).map_err(BindError::Tls)?;
        let mut tls_by_backend = HashMap::new();
        for (name, u) in &settings.backends {
            if u.ca_file != settings.upstream.ca_file {
                tls_by_backend.insert(name.clone(), tls::client_config(u.ca_file.as_deref()).map_err(BindError::Tls)?);
            }
        }
        let auth: Box<dyn auth::AuthPlugin> = match &settings.auth {
            Some(ldap) => Box::new(auth::Ldap::new(ldap.clone()).map_err(BindError::Auth)?),
            None => Box::new(auth::PassThrough),
        };
        let limits = Limits::new(settings.max_connections_per_ip, settings.max_failed_logins_per_ip_per_minute);
        Ok(Shared {
            server_tls: ArcSwap::new(server),
            tls_dir: dir.to_path_buf(),
            settings,
            tls_by_backend,
            default_tls,
            table,
            sessions,
            limits,
            metrics,
            auth,
        })
    }

    fn client_tls(&self, backend: &str) -> &Arc<rustls::ClientConfig> {
        self.tls_by_backend.get(backend).unwrap_or(&self.default_tls)
    }

    /// TLS towards clients, with the certificate in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_tls.load_full())
    }
}

/// The server TLS config of `settings`' certificate (or the self-signed one
/// kept in `dir`).
fn server_tls(settings: &Settings, dir: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let names = vec![settings.hostname.clone(), "localhost".to_string()];
    tls::server_config(settings.cert_file.as_deref(), settings.key_file.as_deref(), dir, &names)
}

/// Reloads the mail certificate of a running edge (SIGHUP).
#[derive(Clone)]
pub struct MailTls(Arc<Shared>);

impl MailTls {
    /// Reads the certificate and key that `settings` (the reloaded `[mail]`
    /// section) names and serves them to new connections; sessions already
    /// open keep theirs. On any error the certificate in force stays. Other
    /// `[mail]` changes need a restart.
    pub fn reload(&self, settings: &Settings) -> Result<(), String> {
        let config = server_tls(settings, &self.0.tls_dir)?;
        self.0.server_tls.store(config);
        Ok(())
    }
}

/// The bound mail listeners.
pub struct Mail {
    listeners: Vec<(TcpListener, Listen)>,
    addrs: Vec<(Listen, SocketAddr)>,
    shared: Arc<Shared>,
}

impl Mail {
    /// Loads (or makes) the certificate and binds every listener.
    pub async fn bind(
        settings: Settings,
        data_dir: &Path,
        table: Table,
        sessions: Arc<Sessions>,
        metrics: MailMetrics,
    ) -> Result<Mail, BindError> {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for listen in &settings.listen {
            let addr = listen.addr;
            let l = TcpListener::bind(addr).await.map_err(|source| BindError::Listen { addr, source })?;
            addrs.push((*listen, l.local_addr().map_err(|source| BindError::Listen { addr, source })?));
            listeners.push((l, *listen));
        }
        if settings.upstream.ca_file.is_none() {
            tracing::info!("mail: backend TLS certificates are not verified (no mail.upstream.ca_file)");
        }
        let shared = Shared::new(settings, &data_dir.join("mail"), table, sessions, metrics)?;
        Ok(Mail { listeners, addrs, shared: Arc::new(shared) })
    }

    /// Where each listener is bound: `(protocol label, implicit TLS, address)`.
    /// A handle that reloads the certificate while the listeners serve.
    pub fn tls(&self) -> MailTls {
        MailTls(self.shared.clone())
    }

    pub fn local_addrs(&self) -> Vec<(&'static str, bool, SocketAddr)> {
        self.addrs.iter().map(|(l, a)| (l.protocol.label(), l.implicit_tls, *a)).collect()
    }

    /// Accepts until `shutdown`; open sessions are left to end.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (listener, listen) in self.listeners {
            let (shared, mut stop) = (self.shared.clone(), shutdown.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                tokio::spawn(serve_connection(shared.clone(), stream, peer, listen));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "mail accept failed");
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

/// One client connection, from accept to close.
struct Client {
    shared: Arc<Shared>,
    protocol: Protocol,
    peer: SocketAddr,
    local: SocketAddr,
}

async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, listen: Listen) {
    let label = listen.protocol.label();
    let Some(_slot) = shared.limits.connect(peer.ip()) else {
        shared.metrics.connections.with_label_values(&[label, "refused_limit"]).inc();
        tracing::warn!(client = %peer, protocol = label, "mail: too many connections from this address; closed");
        return;
    };
    shared.metrics.connections.with_label_values(&[label, "accepted"]).inc();
    let open = shared.metrics.open.with_label_values(&[label]);
    open.inc();
    let _open = scopeguard(move || open.dec());
    let local = tcp.local_addr().unwrap_or(peer);
    let client = Client { shared: shared.clone(), protocol: listen.protocol, peer, local };
    let mut conn = Conn::new(Stream::Plain(tcp));
    if listen.implicit_tls {
        conn = match tokio::time::timeout(shared.settings.login_timeout, conn.accept_tls(&shared.acceptor())).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, protocol = label, error = %e, "mail: TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
    }
    let result = match listen.protocol {
        Protocol::Imap => imap::serve(&client, conn).await,
        Protocol::Pop3 => pop3::serve(&client, conn).await,
        Protocol::Submission => smtp::serve_submission(&client, conn).await,
        Protocol::Mx => smtp::serve_mx(&client, conn).await,
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, protocol = label, error = %e, "mail: connection ended");
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Why a login was refused before (or instead of) a backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Wrong password, unknown user (the same answer: no enumeration), or
    /// the backend said no.
    Failed,
    /// Too many failed logins from this address this minute.
    RateLimited,
    /// Temporary: the backend is down or unreachable, the directory did not
    /// answer.
    Unavailable(String),
}

/// Where a login goes.
pub(crate) struct Route {
    pub backend: Arc<Backend>,
    pub addr: SocketAddr,
}

/// A session its pre-auth dialogue logged in: the client's connection, the
/// backend's, the user and where it went.
type LoggedIn = (Conn, Conn, String, Route);

impl Client {
    fn label(&self) -> &'static str {
        self.protocol.label()
    }

    /// Counts a login outcome (and a failure against the address).
    fn outcome(&self, result: &'static str) {
        self.shared.metrics.logins.with_label_values(&[self.label(), result]).inc();
        if result == "failed" {
            self.shared.limits.failed(self.peer.ip());
        }
    }

    /// Runs a protocol's pre-auth dialogue under the login timeout, then
    /// relays the session if it logged in. A client that runs out of time
    /// is closed without a word.
    async fn serve_preauth(
        &self,
        preauth: impl std::future::Future<Output = Result<Option<LoggedIn>, LineError>>,
    ) -> Result<(), LineError> {
        let logged_in = match tokio::time::timeout(self.shared.settings.login_timeout, preauth).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if let Some((conn, upstream, user, route)) = logged_in {
            self.relay(&user, &route.backend, conn, upstream).await;
        }
        Ok(())
    }

    /// Routes a login, connects to its backend and replays the login there
    /// with `dialogue` (the protocol's side of it), which returns the
    /// backend's connection and its answer.
    async fn login_upstream<A>(
        &self,
        credentials: &Credentials,
        dialogue: impl AsyncFnOnce(Conn, &Route) -> Result<(Conn, A), LineError>,
    ) -> Result<(Conn, A, Route), Refusal> {
        let route = self.route(credentials).await?;
        let upstream = self.connect(&route).await?;
        match dialogue(upstream, &route).await {
            Ok((conn, answer)) => Ok((conn, answer, route)),
            Err(e) => Err(self.dialogue_failed(&route, &e)),
        }
    }

    /// A backend broke its side of the dialogue: counted, logged, and a
    /// temporary failure for the client.
    fn dialogue_failed(&self, route: &Route, error: &LineError) -> Refusal {
        self.outcome("upstream_error");
        tracing::warn!(protocol = self.label(), backend = %route.backend.name, %error, "mail: backend dialogue failed");
        Refusal::Unavailable("mailbox server unavailable".into())
    }

    /// Checks the credentials with the plug-in and finds the backend: the
    /// step every login takes before a backend is contacted.
    async fn route(&self, credentials: &Credentials) -> Result<Route, Refusal> {
        if self.shared.limits.blocked(self.peer.ip()) {
            self.outcome("rate_limited");
            return Err(Refusal::RateLimited);
        }
        let user = credentials.user.to_ascii_lowercase();
        let waited = self.shared.sessions.wait_hold(&user).await;
        if !waited.is_zero() {
            tracing::info!(user, waited_ms = waited.as_millis() as u64, "mail: login waited for a move");
        }
        match self.shared.auth.check(credentials).await {
            auth::Verdict::Backend | auth::Verdict::Accepted => {}
            auth::Verdict::Rejected => {
                self.outcome("failed");
                tracing::info!(client = %self.peer, protocol = self.label(), user, "mail login refused by the auth plug-in");
                return Err(Refusal::Failed);
            }
            auth::Verdict::Unavailable(reason) => {
                self.outcome("unavailable");
                tracing::warn!(client = %self.peer, protocol = self.label(), user, reason, "mail login: auth plug-in unavailable");
                return Err(Refusal::Unavailable("authentication service unavailable".into()));
            }
        }
        let snapshot = self.shared.table.load();
        let backend = match snapshot.mail_backend(&user) {
            Some(b) => Some(b.clone()),
            None => match self.shared.auth.route(&user).await {
                Some(name) => self.shared.table.load().backend(&name.to_ascii_lowercase()).cloned(),
                None => None,
            },
        };
        let Some(backend) = backend else {
            self.outcome("failed");
            tracing::info!(client = %self.peer, protocol = self.label(), user, "mail login for an unknown user");
            return Err(Refusal::Failed);
        };
        let upstream = self.shared.settings.upstream(&backend.name);
        let addr = match (backend.state, upstream::address(&backend, upstream, self.protocol)) {
            (BackendState::Down, _) | (_, None) => {
                self.outcome("unavailable");
                tracing::warn!(user, backend = %backend.name, "mail login: backend down or without address");
                return Err(Refusal::Unavailable("mailbox server unavailable".into()));
            }
            (_, Some(addr)) => addr,
        };
        Ok(Route { backend, addr })
    }

    /// Connects to the routed backend (PROXY header and implicit TLS
    /// included).
    async fn connect(&self, route: &Route) -> Result<Conn, Refusal> {
        let upstream = self.shared.settings.upstream(&route.backend.name);
        upstream::connect(
            route.addr,
            &route.backend,
            upstream,
            self.shared.client_tls(&route.backend.name),
            self.shared.settings.upstream_connect_timeout,
            self.peer,
            self.local,
        )
        .await
        .map_err(|e| {
            self.outcome("upstream_error");
            tracing::warn!(backend = %route.backend.name, addr = %route.addr, error = %e, "mail: backend unreachable");
            Refusal::Unavailable("mailbox server unavailable".into())
        })
    }

    /// STARTTLS towards the backend, once its dialogue said go.
    async fn upstream_tls(&self, conn: Conn, backend: &Backend) -> Result<Conn, std::io::Error> {
        let timeout = self.shared.settings.upstream_connect_timeout;
        tokio::time::timeout(
            timeout,
            conn.connect_tls(self.shared.client_tls(&backend.name), upstream::server_name(backend)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "backend TLS handshake timed out"))?
    }

    /// After a successful login: registers the session, relays to the end,
    /// counts and logs it.
    async fn relay(&self, user: &str, backend: &Backend, client: Conn, upstream: Conn) {
        let label = self.label();
        self.outcome("ok");
        let kick = Arc::new(Notify::new());
        let registered = self.shared.sessions.register(label, user, &backend.name, self.peer, {
            let kick = kick.clone();
            Box::new(move || kick.notify_one())
        });
        tracing::info!(client = %self.peer, protocol = label, user, backend = %backend.name, "mail login routed");
        let start = Instant::now();
        let (end, counts) = relay::relay(client, upstream, self.shared.settings.idle_timeout, kick).await;
        drop(registered);
        let m = &self.shared.metrics;
        m.bytes.with_label_values(&[label, "to_backend"]).inc_by(counts.to_backend);
        m.bytes.with_label_values(&[label, "to_client"]).inc_by(counts.to_client);
        m.duration.with_label_values(&[label]).observe(start.elapsed().as_secs_f64());
        tracing::info!(
            client = %self.peer, protocol = label, user, backend = %backend.name, end = ?end,
            to_backend = counts.to_backend, to_client = counts.to_client,
            secs = start.elapsed().as_secs(), "mail session ended"
        );
    }
}
