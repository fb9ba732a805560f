//! One client connection: the edge is its SSH server. Logins are routed by
//! user name from the snapshot taken at authentication, and authenticated
//! against the backend (see the module docs of [`super`]); then every
//! channel the client opens is relayed to a channel on that backend.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing_table::entity::UpstreamAuth;
use routing_table::SftpLogin;
use russh::client::KeyboardInteractiveAuthResponse;
use russh::keys::PublicKey;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey};
use russh::{Channel, MethodKind, MethodSet};

use super::upstream::{self, Upstream};
use super::{relay, Settings, Shared};
use crate::sessions::Registered;

/// The russh server configuration: our host keys, modern algorithms only
/// (russh's defaults: curve25519/ecdh kex, chacha20-poly1305/AES-GCM/CTR,
/// ETM MACs; no SHA-1 kex, no CBC), constant-time rejections.
pub fn server_config(settings: &Settings, keys: &super::keys::EdgeKeys) -> server::Config {
    server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Edge".into()),
        methods: MethodSet::from(&[MethodKind::Password, MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: keys.host.clone(),
        inactivity_timeout: Some(settings.idle_timeout),
        keepalive_interval: Some(Duration::from_secs(60)),
        max_auth_attempts: 6,
        nodelay: true,
        ..server::Config::default()
    }
}

/// Serves one accepted connection to its end.
pub async fn serve_connection<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(_slot) = shared.limits.connect(peer.ip()) else {
        shared.metrics.connections.with_label_values(&["refused_limit"]).inc();
        tracing::warn!(client = %peer, "ssh: too many connections from this address; closed");
        return;
    };
    shared.metrics.connections.with_label_values(&["accepted"]).inc();
    shared.metrics.open.inc();
    let _open = GaugeGuard(shared.metrics.open.clone());
    let logged_in = Arc::new(AtomicBool::new(false));
    let handler = EdgeSession {
        shared: shared.clone(),
        peer,
        logged_in: logged_in.clone(),
        upstream: None,
        keyboard: None,
        registered: None,
        since: None,
    };
    let grace = shared.settings.login_grace;
    // The version exchange happens inside run_stream: bound it by the grace.
    let running = match tokio::time::timeout(grace, server::run_stream(shared.server.clone(), stream, handler)).await {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "ssh: handshake failed");
            return;
        }
        Err(_) => return,
    };
    let handle = running.handle();
    let guard = tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if !logged_in.load(Ordering::Acquire) {
            tracing::info!(client = %peer, "ssh: login grace time over; disconnecting");
            let _ =
                handle.disconnect(russh::Disconnect::ByApplication, "login grace time over".into(), "en".into()).await;
        }
    });
    if let Err(e) = running.await {
        tracing::debug!(client = %peer, error = %e, "ssh: session ended with an error");
    }
    guard.abort();
}

/// Decrements the open-connections gauge when dropped.
struct GaugeGuard(prometheus::IntGauge);
impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A keyboard-interactive login in progress against the backend.
struct Keyboard {
    upstream: Upstream,
    user: String,
    login: Arc<SftpLogin>,
}

/// The routed backend of a logged-in connection.
struct Routed {
    handle: Upstream,
    login: Arc<SftpLogin>,
}

struct EdgeSession {
    shared: Arc<Shared>,
    peer: SocketAddr,
    logged_in: Arc<AtomicBool>,
    upstream: Option<Routed>,
    keyboard: Option<Keyboard>,
    registered: Option<Registered>,
    since: Option<Instant>,
}

/// Why a login attempt did not get through, for metrics and logs. The
/// client always sees the same rejection.
enum Refusal {
    Failed,
    RateLimited,
    NotAllowed,
    Upstream(String),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Failed => "failed",
            Refusal::RateLimited => "rate_limited",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Upstream(_) => "upstream_error",
        }
    }
}

impl EdgeSession {
    fn ip(&self) -> IpAddr {
        self.peer.ip()
    }

    /// Waits while a move of `user`'s login is being committed (`--hold`),
    /// so the route read next is the new one.
    async fn held(&self, user: &str) {
        let waited = self.shared.sessions.wait_hold(user).await;
        if !waited.is_zero() {
            tracing::info!(user, waited_ms = waited.as_millis() as u64, "ssh: login waited for a move");
        }
    }

    /// The login for `user` and its backend's address, from the current
    /// snapshot; `None` for unknown users and backends that are down.
    fn route(&self, user: &str) -> Option<(Arc<SftpLogin>, String, SocketAddr)> {
        let snap = self.shared.table.load();
        let login = snap.sftp_login(user)?.clone();
        let backend = snap.backend(&login.backend)?;
        if backend.state == routing_table::BackendState::Down {
            return None;
        }
        let ip = backend.ipv4().map(IpAddr::V4).or_else(|| backend.ipv6().map(IpAddr::V6))?;
        Some((login.clone(), backend.name.to_string(), SocketAddr::new(ip, self.shared.settings.upstream_port)))
    }

    async fn connect(&self, backend: &str, addr: SocketAddr) -> Result<Upstream, Refusal> {
        upstream::connect(&self.shared, backend, addr).await.map_err(Refusal::Upstream)
    }

    /// Records the outcome of a login attempt and turns it into an answer.
    fn outcome(&mut self, method: &'static str, user: &str, result: Result<Routed, Refusal>) -> Auth {
        match result {
            Ok(routed) => {
                self.shared.metrics.auth.with_label_values(&[method, "ok"]).inc();
                self.shared.metrics.routed.inc();
                let backend = routed.login.backend.to_string();
                tracing::info!(client = %self.peer, user, backend = %backend, method, "ssh login routed");
                self.upstream = Some(routed);
                Auth::Accept
            }
            Err(refusal) => {
                self.shared.metrics.auth.with_label_values(&[method, refusal.label()]).inc();
                if matches!(refusal, Refusal::Failed | Refusal::NotAllowed) {
                    self.shared.limits.failed(self.ip());
                }
                match &refusal {
                    Refusal::Upstream(e) => {
                        tracing::warn!(client = %self.peer, user, method, error = %e, "ssh login: backend unreachable")
                    }
                    other => {
                        tracing::info!(client = %self.peer, user, method, result = other.label(), "ssh login refused")
                    }
                }
                Auth::reject()
            }
        }
    }

    /// The first steps of a pass-through login (password, keyboard-
    /// interactive): the per-IP cap, the route, and a key exchange with the
    /// user's backend.
    async fn pass_through(&self, user: &str) -> Result<(Upstream, Arc<SftpLogin>), Refusal> {
        if self.shared.limits.blocked(self.ip()) {
            return Err(Refusal::RateLimited);
        }
        self.held(user).await;
        let (login, backend, addr) = self.route(user).ok_or(Refusal::Failed)?;
        if login.upstream_auth == UpstreamAuth::Certificate {
            return Err(Refusal::NotAllowed); // keys only for this login
        }
        Ok((self.connect(&backend, addr).await?, login))
    }

    async fn password(&mut self, user: &str, password: &str) -> Result<Routed, Refusal> {
        let (mut handle, login) = self.pass_through(user).await?;
        let result =
            handle.authenticate_password(user, password).await.map_err(|e| Refusal::Upstream(e.to_string()))?;
        if !result.success() {
            return Err(Refusal::Failed);
        }
        Ok(Routed { handle, login })
    }

    async fn publickey(&mut self, user: &str, key: &PublicKey) -> Result<Routed, Refusal> {
        if self.shared.limits.blocked(self.ip()) {
            return Err(Refusal::RateLimited);
        }
        self.held(user).await;
        let (login, backend, addr) = self.route(user).ok_or(Refusal::Failed)?;
        if !authorized(&login, key) {
            return Err(Refusal::Failed);
        }
        let cert =
            self.shared.keys.certificate(user, self.shared.settings.certificate_validity).map_err(Refusal::Upstream)?;
        let mut handle = self.connect(&backend, addr).await?;
        let result = handle
            .authenticate_openssh_cert(user, self.shared.keys.upstream.clone(), cert)
            .await
            .map_err(|e| Refusal::Upstream(e.to_string()))?;
        if !result.success() {
            return Err(Refusal::Upstream(format!("backend {backend} refused the edge's certificate for {user}")));
        }
        Ok(Routed { handle, login })
    }

    /// Turns the backend's keyboard-interactive step into ours.
    fn keyboard_step(&mut self, step: KeyboardInteractiveAuthResponse, pending: Keyboard) -> Result<Auth, Refusal> {
        match step {
            KeyboardInteractiveAuthResponse::Success => {
                let auth = self.outcome(
                    "keyboard_interactive",
                    &pending.user.clone(),
                    Ok(Routed { handle: pending.upstream, login: pending.login }),
                );
                Ok(auth)
            }
            KeyboardInteractiveAuthResponse::Failure { .. } => Err(Refusal::Failed),
            KeyboardInteractiveAuthResponse::InfoRequest { name, instructions, prompts } => {
                let prompts: Vec<(Cow<'static, str>, bool)> =
                    prompts.into_iter().map(|p| (Cow::Owned(p.prompt), p.echo)).collect();
                self.keyboard = Some(pending);
                Ok(Auth::Partial { name: name.into(), instructions: instructions.into(), prompts: prompts.into() })
            }
        }
    }

    fn logged_in(&mut self, session: &mut Session) {
        let Some(routed) = &self.upstream else { return };
        self.logged_in.store(true, Ordering::Release);
        self.since = Some(Instant::now());
        let handle = session.handle();
        let kick = Box::new(move || {
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "your files moved to another server; please reconnect".into(),
                        "en".into(),
                    )
                    .await;
            });
        });
        let login = &routed.login;
        self.registered = Some(self.shared.sessions.register("ssh", &login.user, &login.backend, self.peer, kick));
    }
}

/// Whether `key` is one of the login's `authorized_keys`.
fn authorized(login: &SftpLogin, key: &PublicKey) -> bool {
    login.authorized_keys.iter().any(|line| {
        // `[options] type base64 [comment]`: find the key among the fields.
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.windows(2).any(|w| {
            PublicKey::from_openssh(&format!("{} {}", w[0], w[1])).is_ok_and(|k| k.key_data() == key.key_data())
        })
    })
}

impl server::Handler for EdgeSession {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.shared.settings.banner.clone())
    }

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject { proceed_with_methods: None, partial_success: false })
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let result = self.password(user, password).await;
        Ok(self.outcome("password", user, result))
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        // Only the table's keys go on to a signature check.
        let known = self.route(user).is_some_and(|(login, _, _)| authorized(&login, offer.public_key));
        Ok(if known { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let result = self.publickey(user, key.public_key).await;
        Ok(self.outcome("publickey", user, result))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let step = match (response, self.keyboard.take()) {
            (Some(answers), Some(mut pending)) if pending.user == user => {
                let answers: Vec<String> = answers.map(|b| String::from_utf8_lossy(&b).into_owned()).collect();
                match pending.upstream.authenticate_keyboard_interactive_respond(answers).await {
                    Ok(step) => self.keyboard_step(step, pending),
                    Err(e) => Err(Refusal::Upstream(e.to_string())),
                }
            }
            _ => match self.pass_through(user).await {
                Err(e) => Err(e),
                Ok((mut handle, login)) => match handle.authenticate_keyboard_interactive_start(user, None).await {
                    Ok(step) => self.keyboard_step(step, Keyboard { upstream: handle, user: user.to_string(), login }),
                    Err(e) => Err(Refusal::Upstream(e.to_string())),
                },
            },
        };
        Ok(match step {
            Ok(auth) => auth,
            Err(refusal) => self.outcome("keyboard_interactive", user, Err(refusal)),
        })
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.logged_in(session);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(routed) = &self.upstream else { return Ok(()) }; // dropped: rejected
        match routed.handle.channel_open_session().await {
            Ok(up) => {
                reply.accept().await;
                self.shared.metrics.channels.inc();
                tokio::spawn(relay::relay(channel, up, session.handle(), self.shared.metrics.clone()));
            }
            Err(e) => {
                tracing::warn!(client = %self.peer, error = %e, "ssh: backend refused a session channel");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(routed) = &self.upstream else { return Ok(()) };
        if !routed.login.port_forwarding {
            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        match routed
            .handle
            .channel_open_direct_tcpip(host_to_connect, port_to_connect, originator_address, originator_port)
            .await
        {
            Ok(up) => {
                reply.accept().await;
                self.shared.metrics.channels.inc();
                tokio::spawn(relay::relay(channel, up, session.handle(), self.shared.metrics.clone()));
            }
            Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }
}

impl Drop for EdgeSession {
    fn drop(&mut self) {
        if let Some(since) = self.since {
            self.shared.metrics.duration.observe(since.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};

    fn login(keys: &[String]) -> SftpLogin {
        serde_json::from_value(serde_json::json!({"user": "alice", "backend": "b1", "authorized_keys": keys})).unwrap()
    }

    #[test]
    fn authorized_keys_lines_match_with_options_and_comments() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap().public_key().clone();
        let other = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap().public_key().clone();
        let line = key.to_openssh().unwrap();
        assert!(authorized(&login(std::slice::from_ref(&line)), &key));
        assert!(authorized(&login(&[format!("{line} alice@laptop")]), &key));
        assert!(authorized(&login(&[format!("no-pty,from=\"10.0.0.0/8\" {line} c")]), &key));
        assert!(authorized(&login(&["garbage".into(), line.clone()]), &key));
        assert!(!authorized(&login(&[line]), &other));
        assert!(!authorized(&login(&[]), &key));
    }
}
