//! SMTP: submission (587 with STARTTLS, 465) routed by the authenticated
//! user, and inbound MX (25) routed by recipient.

use std::sync::Arc;
use std::time::Duration;

use routing_table::{Backend, BackendState, Recipient};

use super::config::{ClientAddress, UpstreamTls};
use super::io::{Conn, LineError};
use super::parse::data::DataFilter;
use super::parse::sasl::{self, Credentials, SaslError};
use super::parse::smtp::{self, xtext, Command};
use super::{Client, LoggedIn, Refusal, Route};

const UPSTREAM_LINE: usize = 8192;
/// Longest multi-line reply read from a backend.
const MAX_REPLY_LINES: usize = 100;
/// Command and data timeouts at MX (RFC 5321 §4.5.3.2 suggests 5 min).
const MX_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest message relayed at MX.
const MAX_MESSAGE: u64 = 64 * 1024 * 1024;

/// A backend's reply: its code and lines (`250-…`, `250 …`).
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// As sent on to the client.
    fn wire(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\r\n")).collect()
    }

    fn has_keyword(&self, keyword: &str) -> bool {
        self.lines.iter().any(|l| {
            l.get(4..).and_then(|rest| rest.split(' ').next()).is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

async fn read_reply(up: &mut Conn) -> Result<Reply, LineError> {
    let mut lines = Vec::new();
    loop {
        let line = up.read_line(UPSTREAM_LINE).await?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
        let Some(code) = code.filter(|c| (200..600).contains(c)) else {
            return Err(LineError::unexpected("reply", &line));
        };
        let last = text.as_bytes().get(3) != Some(&b'-');
        lines.push(text);
        if last {
            return Ok(Reply { code, lines });
        }
        if lines.len() > MAX_REPLY_LINES {
            return Err(LineError::unexpected("reply (too many lines)", &line));
        }
    }
}

async fn ask(up: &mut Conn, line: &str) -> Result<Reply, LineError> {
    up.send(format!("{line}\r\n").as_bytes()).await?;
    read_reply(up).await
}

/// Our EHLO answer: `keywords` after the greeting line.
fn ehlo_reply(host: &str, keywords: &[&str]) -> String {
    let mut out = String::new();
    let mut lines = vec![host.to_string()];
    lines.extend(keywords.iter().map(|k| (*k).to_string()));
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("250{sep}{l}\r\n"));
    }
    out
}

/// Opens an SMTP session with `route`'s backend for a client that said
/// `helo`: greeting, EHLO, STARTTLS, then XCLIENT (and EHLO again) where
/// the backend offers it. Returns the connection and its last EHLO reply.
async fn open_upstream(client: &Client, route: &Route, helo: &str) -> Result<Conn, Refusal> {
    let mut up = client.connect(route).await?;
    let result: Result<Conn, LineError> = async {
        let me = &client.shared.settings.hostname;
        let upstream = client.shared.settings.upstream(&route.backend.name);
        let greeting = read_reply(&mut up).await?;
        if greeting.code != 220 {
            return Err(LineError::unexpected("greeting", greeting.wire().as_bytes()));
        }
        let mut ehlo = ask(&mut up, &format!("EHLO {me}")).await?;
        if ehlo.code != 250 {
            return Err(LineError::unexpected("EHLO reply", ehlo.wire().as_bytes()));
        }
        if upstream.tls == UpstreamTls::Starttls {
            let go = ask(&mut up, "STARTTLS").await?;
            if go.code != 220 {
                return Err(LineError::unexpected("STARTTLS reply", go.wire().as_bytes()));
            }
            up = client.upstream_tls(up, &route.backend).await?;
            ehlo = ask(&mut up, &format!("EHLO {me}")).await?;
        }
        if upstream.client_address == ClientAddress::Native {
            if ehlo.has_keyword("XCLIENT") {
                let (ip, port) = (client.peer.ip().to_string(), client.peer.port().to_string());
                let line =
                    format!("XCLIENT ADDR={} PORT={} HELO={} PROTO=ESMTP", xtext(&ip), xtext(&port), xtext(helo));
                let said = ask(&mut up, &line).await?;
                if said.code != 220 {
                    return Err(LineError::unexpected("XCLIENT reply", said.wire().as_bytes()));
                }
                ehlo = ask(&mut up, &format!("EHLO {helo}")).await?;
            } else {
                tracing::debug!(backend = %route.backend.name, "smtp: the backend offers no XCLIENT");
            }
        }
        if ehlo.code != 250 {
            return Err(LineError::unexpected("EHLO reply", ehlo.wire().as_bytes()));
        }
        Ok(up)
    }
    .await;
    result.map_err(|e| client.dialogue_failed(route, &e))
}

// ---------------------------------------------------------------- submission

pub(super) async fn serve_submission(client: &Client, conn: Conn) -> Result<(), LineError> {
    client.serve_preauth(submission_preauth(client, conn)).await
}

async fn submission_preauth(client: &Client, mut conn: Conn) -> Result<Option<LoggedIn>, LineError> {
    let host = client.shared.settings.hostname.clone();
    conn.send(format!("220 {host} ESMTP Edge\r\n").as_bytes()).await?;
    let mut helo: Option<String> = None;
    loop {
        let line = match conn.read_line(smtp::MAX_AUTH_LINE).await {
            Err(LineError::TooLong(_)) => {
                conn.send(b"500 5.5.2 Line too long\r\n").await?;
                return Ok(None);
            }
            other => other?,
        };
        let command = match smtp::parse_line(&line) {
            Ok(c) => c,
            Err(reason) => {
                conn.send(format!("501 5.5.2 Syntax error: {reason}\r\n").as_bytes()).await?;
                continue;
            }
        };
        let credentials = match command {
            Command::Ehlo(name) => {
                let mut keywords = vec!["8BITMIME", "ENHANCEDSTATUSCODES"];
                keywords.push(if conn.is_tls() { "AUTH PLAIN LOGIN" } else { "STARTTLS" });
                conn.send(ehlo_reply(&host, &keywords).as_bytes()).await?;
                helo = Some(name);
                continue;
            }
            Command::Helo(name) => {
                conn.send(format!("250 {host}\r\n").as_bytes()).await?;
                helo = Some(name);
                continue;
            }
            Command::StartTls if conn.is_tls() => {
                conn.send(b"503 5.5.1 TLS already active\r\n").await?;
                continue;
            }
            Command::StartTls => {
                conn.send(b"220 2.0.0 Ready to start TLS\r\n").await?;
                conn = conn.accept_tls(&client.shared.acceptor()).await?;
                // RFC 3207: forget everything learnt before TLS.
                helo = None;
                continue;
            }
            Command::Auth { .. } if !conn.is_tls() => {
                conn.send(b"530 5.7.0 Must issue a STARTTLS command first\r\n").await?;
                continue;
            }
            Command::Auth { .. } if helo.is_none() => {
                conn.send(b"503 5.5.1 Send EHLO first\r\n").await?;
                continue;
            }
            Command::Auth { mechanism, initial } => match auth_exchange(&mut conn, &mechanism, initial).await? {
                Some(c) => c,
                None => continue,
            },
            Command::Mail { .. } | Command::Rcpt { .. } | Command::Data | Command::Bdat => {
                conn.send(b"530 5.7.0 Authentication required\r\n").await?;
                continue;
            }
            Command::Quit => {
                conn.send(b"221 2.0.0 Bye\r\n").await?;
                return Ok(None);
            }
            other => {
                simple_reply(&mut conn, &other).await?;
                continue;
            }
        };
        let credentials = match credentials {
            Ok(c) => c,
            Err(SaslError::Cancelled) => {
                conn.send(b"501 5.7.0 Authentication cancelled\r\n").await?;
                continue;
            }
            Err(SaslError::Malformed) => {
                conn.send(b"501 5.5.2 Invalid authentication data\r\n").await?;
                continue;
            }
            Err(e @ SaslError::Authzid) => {
                client.outcome("failed");
                conn.send(format!("535 5.7.8 {}\r\n", e.reason()).as_bytes()).await?;
                continue;
            }
        };
        let helo_name = helo.clone().unwrap_or_default();
        match submission_login(client, &credentials, &helo_name).await {
            Ok((upstream, reply, route)) if reply.code == 235 => {
                conn.send(reply.wire().as_bytes()).await?;
                return Ok(Some((conn, upstream, credentials.user.to_ascii_lowercase(), route)));
            }
            Ok((mut upstream, reply, _)) => {
                client.outcome("failed");
                let _ = ask(&mut upstream, "QUIT").await;
                conn.send(reply.wire().as_bytes()).await?;
            }
            Err(refusal) => {
                let text = match refusal {
                    Refusal::Failed => "535 5.7.8 Authentication failed".to_string(),
                    Refusal::RateLimited => "454 4.7.0 Too many failed logins; try again later".to_string(),
                    Refusal::Unavailable(why) => format!("454 4.7.0 Temporary failure: {why}; try again later"),
                };
                conn.send(format!("{text}\r\n").as_bytes()).await?;
            }
        }
    }
}

/// The AUTH exchange; `None` when the mechanism is not offered (already
/// answered).
async fn auth_exchange(
    conn: &mut Conn,
    mechanism: &str,
    initial: Option<String>,
) -> Result<Option<Result<Credentials, SaslError>>, LineError> {
    let prompt_for = async |conn: &mut Conn, prompt: &str| -> Result<Vec<u8>, LineError> {
        conn.send(format!("334 {prompt}\r\n").as_bytes()).await?;
        conn.read_line(smtp::MAX_AUTH_LINE).await
    };
    Ok(Some(match mechanism {
        "PLAIN" => {
            let response = match initial {
                Some(r) => r.into_bytes(),
                None => prompt_for(conn, "").await?,
            };
            sasl::response(&response).and_then(|m| sasl::plain(&m))
        }
        "LOGIN" => {
            let user = match initial {
                Some(r) => r.into_bytes(),
                None => prompt_for(conn, "VXNlcm5hbWU6").await?,
            };
            match sasl::response(&user) {
                Ok(user) => {
                    let password = prompt_for(conn, "UGFzc3dvcmQ6").await?;
                    sasl::response(&password).and_then(|p| sasl::login(&user, &p))
                }
                Err(e) => Err(e),
            }
        }
        _ => {
            conn.send(b"504 5.5.4 Unrecognized authentication type\r\n").await?;
            return Ok(None);
        }
    }))
}

async fn submission_login(
    client: &Client,
    credentials: &Credentials,
    helo: &str,
) -> Result<(Conn, Reply, Route), Refusal> {
    let route = client.route(credentials).await?;
    let mut up = open_upstream(client, &route, helo).await?;
    match ask(&mut up, &format!("AUTH PLAIN {}", sasl::encode_plain(credentials))).await {
        Ok(reply) => Ok((up, reply, route)),
        Err(e) => {
            client.outcome("upstream_error");
            tracing::warn!(backend = %route.backend.name, error = %e, "submission: backend AUTH failed");
            Err(Refusal::Unavailable("mail server unavailable".into()))
        }
    }
}

/// Commands answered the same way before login and at MX.
async fn simple_reply(conn: &mut Conn, command: &Command) -> Result<(), LineError> {
    let text: &[u8] = match command {
        Command::Noop => b"250 2.0.0 Ok\r\n",
        Command::Rset => b"250 2.0.0 Ok\r\n",
        Command::Vrfy => b"252 2.0.0 Send some mail, I will try my best\r\n",
        Command::Help => b"214 2.0.0 See RFC 5321\r\n",
        Command::Bdat => b"502 5.5.1 BDAT is not offered here\r\n",
        Command::Auth { .. } => b"503 5.5.1 Authentication is not offered here\r\n",
        _ => b"502 5.5.2 Command not recognized\r\n",
    };
    conn.send(text).await.map_err(LineError::from)
}

// ------------------------------------------------------------------------ MX

/// One MX transaction's state.
#[derive(Default)]
struct Transaction {
    /// `MAIL FROM` as the client gave it: address and parameters.
    from: Option<(String, String)>,
    /// The backend picked by the first accepted recipient.
    backend: Option<String>,
    /// MAIL was replayed to the open upstream for this transaction.
    mail_sent: bool,
}

pub(super) async fn serve_mx(client: &Client, mut conn: Conn) -> Result<(), LineError> {
    let host = client.shared.settings.hostname.clone();
    conn.send(format!("220 {host} ESMTP\r\n").as_bytes()).await?;
    let mut helo: Option<String> = None;
    let mut tx = Transaction::default();
    // The open backend session, kept between transactions to one backend.
    let mut upstream: Option<(Arc<Backend>, Conn)> = None;
    loop {
        let line = match tokio::time::timeout(MX_TIMEOUT, conn.read_line(smtp::MAX_LINE)).await {
            Err(_) => {
                conn.send(b"421 4.4.2 Timeout, closing connection\r\n").await?;
                break;
            }
            Ok(Err(LineError::TooLong(_))) => {
                conn.send(b"500 5.5.2 Line too long\r\n").await?;
                break;
            }
            Ok(other) => other?,
        };
        let command = match smtp::parse_line(&line) {
            Ok(c) => c,
            Err(reason) => {
                conn.send(format!("501 5.5.2 Syntax error: {reason}\r\n").as_bytes()).await?;
                continue;
            }
        };
        match command {
            Command::Ehlo(name) => {
                let mut keywords = vec!["8BITMIME", "ENHANCEDSTATUSCODES"];
                if !conn.is_tls() {
                    keywords.push("STARTTLS");
                }
                conn.send(ehlo_reply(&host, &keywords).as_bytes()).await?;
                helo = Some(name);
                tx = Transaction::default();
            }
            Command::Helo(name) => {
                conn.send(format!("250 {host}\r\n").as_bytes()).await?;
                helo = Some(name);
                tx = Transaction::default();
            }
            Command::StartTls if conn.is_tls() => conn.send(b"503 5.5.1 TLS already active\r\n").await?,
            Command::StartTls => {
                conn.send(b"220 2.0.0 Ready to start TLS\r\n").await?;
                conn = conn.accept_tls(&client.shared.acceptor()).await?;
                helo = None;
                tx = Transaction::default();
                if let Some((_, mut up)) = upstream.take() {
                    let _ = ask(&mut up, "QUIT").await;
                }
            }
            Command::Mail { .. } if helo.is_none() => conn.send(b"503 5.5.1 Send HELO/EHLO first\r\n").await?,
            Command::Mail { .. } if tx.from.is_some() => conn.send(b"503 5.5.1 Nested MAIL command\r\n").await?,
            Command::Mail { from, params } => {
                tx.from = Some((from, params));
                conn.send(b"250 2.1.0 Ok\r\n").await?;
            }
            Command::Rcpt { .. } if tx.from.is_none() => conn.send(b"503 5.5.1 Need MAIL command\r\n").await?,
            Command::Rcpt { to, params } => {
                let reply =
                    recipient(client, &mut tx, &mut upstream, helo.as_deref().unwrap_or(""), &to, &params).await;
                conn.send(reply.as_bytes()).await?;
            }
            Command::Data if tx.backend.is_none() => {
                let text: &[u8] = if tx.from.is_none() {
                    b"503 5.5.1 Need MAIL command\r\n"
                } else {
                    b"554 5.5.1 No valid recipients\r\n"
                };
                conn.send(text).await?;
            }
            Command::Data => {
                let Some((_, up)) = upstream.as_mut() else { break };
                let (reply, keep) = data(&mut conn, up).await?;
                if !keep {
                    upstream = None;
                }
                conn.send(reply.as_bytes()).await?;
                tx = Transaction::default();
            }
            Command::Rset => {
                tx = Transaction::default();
                if let Some((_, up)) = upstream.as_mut() {
                    if ask(up, "RSET").await.is_err() {
                        upstream = None;
                    }
                }
                conn.send(b"250 2.0.0 Ok\r\n").await?;
            }
            Command::Quit => {
                conn.send(b"221 2.0.0 Bye\r\n").await?;
                break;
            }
            other => simple_reply(&mut conn, &other).await?,
        }
    }
    if let Some((_, mut up)) = upstream {
        let _ = ask(&mut up, "QUIT").await;
    }
    Ok(())
}

/// Routes one recipient; returns the reply for the client.
async fn recipient(
    client: &Client,
    tx: &mut Transaction,
    upstream: &mut Option<(Arc<Backend>, Conn)>,
    helo: &str,
    to: &str,
    params: &str,
) -> String {
    let count = |r: &str| client.shared.metrics.recipients.with_label_values(&[r]).inc();
    let snapshot = client.shared.table.load();
    let backend = match snapshot.recipient(to) {
        Recipient::Routed(b) if b.state != BackendState::Down => Arc::new(b.clone()),
        Recipient::Routed(_) | Recipient::Unavailable => {
            count("unavailable");
            return format!("451 4.3.0 <{to}>: mail server unavailable; try again later\r\n");
        }
        Recipient::UnknownDomain => {
            count("unknown");
            return format!("550 5.1.1 <{to}>: Recipient address rejected: not a domain of this server\r\n");
        }
    };
    if let Some(chosen) = &tx.backend {
        if *chosen != *backend.name {
            count("other_backend");
            return format!("452 4.5.3 <{to}>: on another server; try this recipient again in a new transaction\r\n");
        }
    }
    // Reuse the open session when it is to this backend; else open one.
    if upstream.as_ref().is_some_and(|(b, _)| b.name != backend.name) {
        if let Some((_, mut old)) = upstream.take() {
            let _ = ask(&mut old, "QUIT").await;
        }
        tx.mail_sent = false;
    }
    if upstream.is_none() {
        let Some(addr) =
            super::upstream::address(&backend, client.shared.settings.upstream(&backend.name), client.protocol)
        else {
            count("unavailable");
            return format!("451 4.3.0 <{to}>: mail server unavailable; try again later\r\n");
        };
        let route = Route { backend: backend.clone(), addr };
        match open_upstream(client, &route, helo).await {
            Ok(up) => *upstream = Some((backend.clone(), up)),
            Err(_) => {
                count("unavailable");
                return format!("451 4.3.0 <{to}>: mail server unavailable; try again later\r\n");
            }
        }
        tx.mail_sent = false;
    }
    let Some((_, up)) = upstream.as_mut() else { return "451 4.3.0 Internal error\r\n".into() };
    let result: Result<Reply, LineError> = async {
        if !tx.mail_sent {
            let (from, mail_params) = tx.from.clone().unwrap_or_default();
            let line = format!("MAIL FROM:<{from}>{}{mail_params}", if mail_params.is_empty() { "" } else { " " });
            let reply = ask(up, &line).await?;
            if !reply.positive() {
                return Ok(reply);
            }
            tx.mail_sent = true;
        }
        let sep = if params.is_empty() { "" } else { " " };
        ask(up, &format!("RCPT TO:<{to}>{sep}{params}")).await
    }
    .await;
    match result {
        Ok(reply) if reply.positive() => {
            count("accepted");
            tx.backend = Some(backend.name.to_string());
            reply.wire()
        }
        Ok(reply) => {
            count("rejected");
            reply.wire()
        }
        Err(e) => {
            tracing::warn!(backend = %backend.name, error = %e, "mx: backend dialogue failed");
            *upstream = None;
            tx.mail_sent = false;
            count("unavailable");
            format!("451 4.3.0 <{to}>: mail server unavailable; try again later\r\n")
        }
    }
}

/// Relays DATA: the backend's 354, the canonical body, the backend's final
/// reply. Returns the reply for the client, and whether the backend session
/// can be used again (not after a failure or an oversized message).
async fn data(conn: &mut Conn, up: &mut Conn) -> Result<(String, bool), LineError> {
    const FAILED: &str = "451 4.3.0 The mail server failed during the message; try again later\r\n";
    let go = match ask(up, "DATA").await {
        Ok(reply) => reply,
        Err(_) => return Ok((FAILED.into(), false)),
    };
    if go.code != 354 {
        return Ok((go.wire(), true));
    }
    conn.send(go.wire().as_bytes()).await?;
    let mut filter = DataFilter::new();
    let mut out = Vec::with_capacity(16 * 1024);
    let mut size = 0u64;
    let mut backend_ok = true;
    loop {
        if !conn.buffered().is_empty() {
            let used = filter.feed(conn.buffered(), &mut out);
            conn.consume(used);
            size += out.len() as u64;
            if backend_ok && size <= MAX_MESSAGE {
                backend_ok = up.send(&out).await.is_ok();
            }
            out.clear();
            if filter.done() {
                break;
            }
        }
        match tokio::time::timeout(MX_TIMEOUT, conn.fill()).await {
            Ok(r) => r?,
            Err(_) => return Err(LineError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "DATA timed out"))),
        }
    }
    if size > MAX_MESSAGE {
        // The backend never got the end of data: closing drops the message.
        return Ok((format!("552 5.3.4 Message too big (at most {MAX_MESSAGE} bytes)\r\n"), false));
    }
    if !backend_ok {
        return Ok((FAILED.into(), false));
    }
    Ok(match read_reply(up).await {
        Ok(r) => (r.wire(), true),
        Err(_) => (FAILED.into(), false),
    })
}
