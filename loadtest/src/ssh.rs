//! SSH load: logins through the edge's SSH forwarder, as the fixture's
//! `sftp_login` users `lt-u<i>`, each running `backend` on the backend the
//! edge chose. The identity backends ([`Identity`]) are small SSH servers on
//! every fixture address that accept the load test's password and answer
//! that command with their own name, so the answer names the backend that
//! took the login. Judged by the ledger like DNS answers: the login starts
//! the request (routing happens at authentication, after it).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{client, server, Channel, ChannelId, ChannelMsg};

use crate::fixture::Fixture;
use crate::logins::{self, Login};
use crate::report::ProtoStats;
use crate::{Live, Shared};

/// The password every identity backend accepts.
pub const PASSWORD: &str = "loadtest";

/// The identity backends' host key: fixed, so that an edge that pinned it
/// in an earlier run (trust on first use) accepts it again.
fn host_key() -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[0x1d; 32]))
}

/// SSH servers on every fixture backend address, each naming itself.
pub struct Identity {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Identity {
    /// Binds `port` on every fixture address (127.0.100.N).
    pub async fn start(fixture: &Fixture, port: u16) -> anyhow::Result<Identity> {
        let config = Arc::new(server::Config {
            keys: vec![host_key()],
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(Duration::from_secs(30)),
            nodelay: true,
            ..server::Config::default()
        });
        let mut tasks = Vec::new();
        for b in 0..fixture.backends {
            let addr = SocketAddr::new(IpAddr::V4(fixture.address(b)), port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("identity SSH backend on {addr}: {e}"))?;
            let (config, name) = (config.clone(), fixture.backend(b));
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true); // run_stream does not
                    let handler = Named { name: name.clone() };
                    let config = config.clone();
                    tokio::spawn(async move {
                        if let Ok(running) = server::run_stream(config, stream, handler).await {
                            let _ = running.await;
                        }
                    });
                }
            }));
        }
        Ok(Identity { tasks })
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One identity backend's session: `backend` prints its name.
struct Named {
    name: String,
}

impl server::Handler for Named {
    type Error = russh::Error;

    async fn auth_password(&mut self, _user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(if password == PASSWORD { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        drop(channel); // requests come to exec_request
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.data(channel, format!("{}\n", self.name).into_bytes())?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

/// The client side: accepts the edge's host key (the test's own edge).
struct Trusting;

impl client::Handler for Trusting {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

pub struct SshLoad {
    pub edge: SocketAddr,
    /// Logins per second, in all.
    pub rate: u32,
    pub concurrency: usize,
}

impl SshLoad {
    pub async fn run(self, shared: Shared) -> ProtoStats {
        let config = Arc::new(client::Config { nodelay: true, ..client::Config::default() });
        logins::run(SshLogin { edge: self.edge, config }, self.rate, self.concurrency, 0x55aa, shared).await
    }
}

#[derive(Clone)]
struct SshLogin {
    edge: SocketAddr,
    config: Arc<client::Config>,
}

impl Login for SshLogin {
    const PROTOCOL: &'static str = "ssh";

    fn user(fixture: &Fixture, m: usize) -> String {
        fixture.sftp_user(m)
    }

    fn counters(live: &Live) -> [&AtomicU64; 3] {
        [&live.ssh_requests, &live.ssh_failed, &live.ssh_misrouted]
    }

    async fn login(&self, user: &str) -> Result<String, String> {
        login(self.edge, self.config.clone(), user).await
    }
}

/// Logs in as `user` through the edge and runs `backend`; returns what it
/// printed.
async fn login(edge: SocketAddr, config: Arc<client::Config>, user: &str) -> Result<String, String> {
    let mut handle = client::connect(config, edge, Trusting).await.map_err(|e| e.to_string())?;
    let auth = handle.authenticate_password(user, PASSWORD).await.map_err(|e| e.to_string())?;
    if !auth.success() {
        return Err("login refused".into());
    }
    let mut channel = handle.channel_open_session().await.map_err(|e| e.to_string())?;
    channel.exec(true, "backend").await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}
