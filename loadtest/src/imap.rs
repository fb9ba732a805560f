//! IMAP load: logins through the edge's mail forwarder (implicit TLS), as
//! the fixture's `mail_login` users `lt-x<i>`. The identity backends
//! ([`Identity`]) are small IMAP servers on every fixture address that
//! accept the load test's password and answer the login with their own name
//! (`OK [ALERT] lt-b3 …`), which the edge relays as the login's answer. So
//! the answer names the backend that took the login; the ledger judges it
//! like an SSH login.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::fixture::Fixture;
use crate::logins::{self, Login};
use crate::report::ProtoStats;
use crate::{Live, Shared};

/// The password every identity backend accepts.
pub const PASSWORD: &str = "loadtest";
const MAX_COMMAND: usize = 16 * 1024;

/// IMAP servers on every fixture backend address, each naming itself.
pub struct Identity {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Identity {
    /// Binds `port` on every fixture address (127.0.100.N).
    pub async fn start(fixture: &Fixture, port: u16) -> anyhow::Result<Identity> {
        let mut tasks = Vec::new();
        for b in 0..fixture.backends {
            let addr = SocketAddr::new(IpAddr::V4(fixture.address(b)), port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("identity IMAP backend on {addr}: {e}"))?;
            let name = fixture.backend(b);
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, name.clone()));
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

/// One identity backend connection: ID, LOGIN (synchronising literals
/// answered with `+`), LOGOUT.
async fn serve(stream: TcpStream, name: String) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    if w.write_all(format!("* OK {name} ready\r\n").as_bytes()).await.is_err() {
        return;
    }
    while let Ok(Some(command)) = read_command(&mut r, &mut w).await {
        let text = String::from_utf8_lossy(&command).into_owned();
        let mut words = text.split(' ');
        let (tag, verb) = (words.next().unwrap_or("*"), words.next().unwrap_or("").to_ascii_uppercase());
        let reply = match verb.as_str() {
            "ID" => format!("* ID NIL\r\n{tag} OK ID completed\r\n"),
            "LOGIN" if text.ends_with(PASSWORD) => format!("{tag} OK [ALERT] {name} logged in\r\n"),
            "LOGIN" => format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
            "LOGOUT" => {
                let _ = w.write_all(format!("* BYE {name}\r\n{tag} OK Logout completed.\r\n").as_bytes()).await;
                return;
            }
            _ => format!("{tag} BAD unknown command\r\n"),
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one command, literals inlined (a space stands for each CRLF after
/// a literal's announcement): `E2 LOGIN lt-x1 loadtest`.
async fn read_command<R, W>(r: &mut BufReader<R>, w: &mut W) -> std::io::Result<Option<Vec<u8>>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut command = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let literal = line.ends_with(b"}").then(|| line.iter().rposition(|&b| b == b'{')).flatten();
        let Some(open) = literal else {
            command.extend_from_slice(&line);
            return Ok(Some(command));
        };
        let spec = String::from_utf8_lossy(&line[open + 1..line.len() - 1]).into_owned();
        let (digits, sync) = match spec.strip_suffix('+') {
            Some(d) => (d.to_string(), false),
            None => (spec, true),
        };
        let n: usize = digits.parse().map_err(|_| std::io::Error::other("bad literal"))?;
        if n > MAX_COMMAND || command.len() + n > MAX_COMMAND {
            return Err(std::io::Error::other("literal too big"));
        }
        command.extend_from_slice(&line[..open]);
        if sync {
            w.write_all(b"+ go ahead\r\n").await?;
        }
        let mut value = vec![0u8; n];
        r.read_exact(&mut value).await?;
        command.extend_from_slice(&value);
    }
}

pub struct ImapLoad {
    /// The edge's implicit-TLS IMAP listener.
    pub edge: SocketAddr,
    /// Logins per second, in all.
    pub rate: u32,
    pub concurrency: usize,
}

impl ImapLoad {
    pub async fn run(self, shared: Shared) -> ProtoStats {
        let tls = match proxy::mail::tls::client_config(None) {
            Ok(c) => tokio_rustls::TlsConnector::from(c),
            Err(e) => {
                tracing::error!(error = %e, "imap load: TLS client config");
                return ProtoStats::default();
            }
        };
        logins::run(ImapLogin { edge: self.edge, tls }, self.rate, self.concurrency, 0x1a2b, shared).await
    }
}

#[derive(Clone)]
struct ImapLogin {
    edge: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Login for ImapLogin {
    const PROTOCOL: &'static str = "imap";

    fn user(fixture: &Fixture, m: usize) -> String {
        fixture.mail_user(m)
    }

    fn counters(live: &Live) -> [&AtomicU64; 3] {
        [&live.imap_requests, &live.imap_failed, &live.imap_misrouted]
    }

    async fn login(&self, user: &str) -> Result<String, String> {
        login(self.edge, &self.tls, user).await
    }
}

/// Logs in as `user` through the edge; returns the backend name in the
/// answer.
async fn login(edge: SocketAddr, tls: &tokio_rustls::TlsConnector, user: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(edge).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.map_err(|e| e.to_string())?;
    if !line.starts_with("* OK") {
        return Err(format!("greeting: {line}"));
    }
    w.write_all(format!("a LOGIN {user} {PASSWORD}\r\n").as_bytes()).await.map_err(|e| e.to_string())?;
    loop {
        line.clear();
        if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before the login answer".into());
        }
        if let Some(answer) = line.strip_prefix("a ") {
            let _ = w.write_all(b"b LOGOUT\r\n").await;
            let _ = w.shutdown().await;
            if !answer.starts_with("OK") {
                return Err(format!("login: {}", answer.trim_end()));
            }
            return answer
                .split(' ')
                .find(|w| w.starts_with("lt-b"))
                .map(str::to_string)
                .ok_or_else(|| format!("no backend in {}", answer.trim_end()));
        }
    }
}
