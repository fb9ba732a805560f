//! IMAP (143 with STARTTLS, 993): the dialogue before login, the login
//! replayed upstream, then the relay.

use super::config::{ClientAddress, UpstreamTls};
use super::io::{Conn, LineError};
use super::parse::imap::{self, Command, Step};
use super::parse::sasl::{self, Credentials, SaslError};
use super::{Client, LoggedIn, Refusal, Route};

/// Longest line read from a backend before login (capability lists).
const UPSTREAM_LINE: usize = 64 * 1024;
/// Longest AUTHENTICATE response line.
const SASL_LINE: usize = 12_288;

/// What the backend answered to the replayed login.
struct Answer {
    ok: bool,
    /// The tagged line after the tag (`OK [CAPABILITY …] Logged in`).
    text: String,
    /// Untagged lines sent before it.
    untagged: Vec<String>,
}

pub(super) async fn serve(client: &Client, conn: Conn) -> Result<(), LineError> {
    client.serve_preauth(preauth(client, conn)).await
}

fn capabilities(tls: bool) -> &'static str {
    if tls {
        "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN"
    } else {
        "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED"
    }
}

async fn preauth(client: &Client, mut conn: Conn) -> Result<Option<LoggedIn>, LineError> {
    let host = &client.shared.settings.hostname;
    conn.send(format!("* OK [CAPABILITY {}] {host} ready.\r\n", capabilities(conn.is_tls())).as_bytes()).await?;
    // The offset of the synchronising literal already answered with `+`.
    let mut continued = None;
    loop {
        let (tag, command) = match imap::parse(conn.buffered()) {
            Step::More { continuation } => {
                if continuation.is_some() && continuation != continued {
                    conn.send(b"+ OK\r\n").await?;
                    continued = continuation;
                }
                conn.fill().await?;
                continue;
            }
            Step::Bad { tag, reason, used: Some(used) } => {
                conn.consume(used);
                continued = None;
                conn.send(format!("{} BAD {reason}.\r\n", tag.as_deref().unwrap_or("*")).as_bytes()).await?;
                continue;
            }
            Step::Bad { reason, used: None, .. } => {
                conn.send(format!("* BYE {reason}.\r\n").as_bytes()).await?;
                return Ok(None);
            }
            Step::Complete { tag, command, used } => {
                conn.consume(used);
                continued = None;
                (tag, command)
            }
        };
        let credentials = match command {
            Command::Capability => {
                let caps = capabilities(conn.is_tls());
                conn.send(format!("* CAPABILITY {caps}\r\n{tag} OK Capability completed.\r\n").as_bytes()).await?;
                continue;
            }
            Command::Noop => {
                conn.send(format!("{tag} OK NOOP completed.\r\n").as_bytes()).await?;
                continue;
            }
            Command::Logout => {
                conn.send(format!("* BYE Logging out.\r\n{tag} OK Logout completed.\r\n").as_bytes()).await?;
                return Ok(None);
            }
            Command::Id => {
                conn.send(format!("* ID (\"name\" \"Edge\")\r\n{tag} OK ID completed.\r\n").as_bytes()).await?;
                continue;
            }
            Command::StartTls if conn.is_tls() => {
                conn.send(format!("{tag} BAD TLS is already active.\r\n").as_bytes()).await?;
                continue;
            }
            Command::StartTls => {
                conn.send(format!("{tag} OK Begin TLS negotiation now.\r\n").as_bytes()).await?;
                // Whatever was pipelined after STARTTLS is dropped here.
                conn = conn.accept_tls(&client.shared.acceptor()).await?;
                continue;
            }
            Command::Login { .. } | Command::Authenticate { .. } if !conn.is_tls() => {
                let text = "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.";
                conn.send(format!("{tag} {text}\r\n").as_bytes()).await?;
                continue;
            }
            Command::Login { user, password } => sasl::login(&user, &password),
            Command::Authenticate { mechanism, initial } => {
                if mechanism != "PLAIN" {
                    conn.send(format!("{tag} NO Unsupported authentication mechanism.\r\n").as_bytes()).await?;
                    continue;
                }
                let response = match initial {
                    Some(r) => r,
                    None => {
                        conn.send(b"+ \r\n").await?;
                        conn.read_line(SASL_LINE).await?
                    }
                };
                sasl::response(&response).and_then(|m| sasl::plain(&m))
            }
            Command::Other(_) => {
                conn.send(format!("{tag} BAD Command not allowed before login.\r\n").as_bytes()).await?;
                continue;
            }
        };
        let credentials = match credentials {
            Ok(c) => c,
            Err(e @ (SaslError::Cancelled | SaslError::Malformed)) => {
                conn.send(format!("{tag} BAD {}.\r\n", e.reason()).as_bytes()).await?;
                continue;
            }
            Err(e @ SaslError::Authzid) => {
                client.outcome("failed");
                conn.send(format!("{tag} NO [AUTHORIZATIONFAILED] {}.\r\n", e.reason()).as_bytes()).await?;
                continue;
            }
        };
        match login(client, &credentials).await {
            Ok((upstream, answer, route)) if answer.ok => {
                for line in &answer.untagged {
                    conn.send(format!("{line}\r\n").as_bytes()).await?;
                }
                conn.send(format!("{tag} {}\r\n", answer.text).as_bytes()).await?;
                return Ok(Some((conn, upstream, credentials.user.to_ascii_lowercase(), route)));
            }
            Ok((mut upstream, answer, _)) => {
                client.outcome("failed");
                upstream.shutdown().await;
                conn.send(format!("{tag} {}\r\n", answer.text).as_bytes()).await?;
            }
            Err(refusal) => {
                let text = match refusal {
                    Refusal::Failed => "NO [AUTHENTICATIONFAILED] Authentication failed.".to_string(),
                    Refusal::RateLimited => {
                        "NO [UNAVAILABLE] Too many failed logins from your address; try again later.".to_string()
                    }
                    Refusal::Unavailable(why) => format!("NO [UNAVAILABLE] Temporary failure: {why}; try again later."),
                };
                conn.send(format!("{tag} {text}\r\n").as_bytes()).await?;
            }
        }
    }
}

/// Routes, connects, and replays the login upstream.
async fn login(client: &Client, credentials: &Credentials) -> Result<(Conn, Answer, Route), Refusal> {
    client.login_upstream(credentials, async |up, route| backend_login(client, up, route, credentials).await).await
}

async fn backend_login(
    client: &Client,
    mut up: Conn,
    route: &Route,
    credentials: &Credentials,
) -> Result<(Conn, Answer), LineError> {
    let upstream = client.shared.settings.upstream(&route.backend.name);
    let greeting = up.read_line(UPSTREAM_LINE).await?;
    // A PREAUTH greeting would log the client in as someone: never relayed.
    if !greeting.starts_with(b"* OK") {
        return Err(LineError::unexpected("greeting", &greeting));
    }
    if upstream.tls == UpstreamTls::Starttls {
        up.send(b"E0 STARTTLS\r\n").await?;
        let answer = tagged(&mut up, "E0").await?;
        if !answer.ok {
            return Err(LineError::unexpected("STARTTLS", answer.text.as_bytes()));
        }
        up = client.upstream_tls(up, &route.backend).await?;
    }
    if upstream.client_address == ClientAddress::Native {
        let id = |k: &str, v: String| format!("\"{k}\" {}", imap::quoted(&v).unwrap_or_else(|| "NIL".into()));
        let fields = [
            id("x-originating-ip", client.peer.ip().to_string()),
            id("x-originating-port", client.peer.port().to_string()),
            id("x-connected-ip", client.local.ip().to_string()),
            id("x-connected-port", client.local.port().to_string()),
        ];
        up.send(format!("E1 ID ({})\r\n", fields.join(" ")).as_bytes()).await?;
        tagged(&mut up, "E1").await?;
    }
    // Synchronising literals carry any bytes: wait for each `+`.
    up.send(format!("E2 LOGIN {}", imap::literal_prefix(credentials.user.as_bytes())).as_bytes()).await?;
    if let Some(answer) = continuation(&mut up, "E2").await? {
        return Ok((up, answer));
    }
    up.send(credentials.user.as_bytes()).await?;
    up.send(format!(" {}", imap::literal_prefix(&credentials.password)).as_bytes()).await?;
    if let Some(answer) = continuation(&mut up, "E2").await? {
        return Ok((up, answer));
    }
    up.send(&credentials.password).await?;
    up.send(b"\r\n").await?;
    let answer = tagged(&mut up, "E2").await?;
    Ok((up, answer))
}

/// Waits for `+`; a tagged answer instead ends the command.
async fn continuation(up: &mut Conn, tag: &str) -> Result<Option<Answer>, LineError> {
    loop {
        let line = up.read_line(UPSTREAM_LINE).await?;
        if line.starts_with(b"+") {
            return Ok(None);
        }
        if let Some(answer) = tagged_line(&line, tag) {
            return Ok(Some(answer));
        }
    }
}

/// Reads to the tagged answer of `tag`, keeping the untagged lines.
async fn tagged(up: &mut Conn, tag: &str) -> Result<Answer, LineError> {
    let mut untagged = Vec::new();
    loop {
        let line = up.read_line(UPSTREAM_LINE).await?;
        if let Some(mut answer) = tagged_line(&line, tag) {
            answer.untagged = untagged;
            return Ok(answer);
        }
        if line.starts_with(b"* ") && untagged.len() < 32 {
            untagged.push(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

fn tagged_line(line: &[u8], tag: &str) -> Option<Answer> {
    let rest = line.strip_prefix(tag.as_bytes())?.strip_prefix(b" ")?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let ok = text.len() >= 2 && text[..2].eq_ignore_ascii_case("OK");
    Some(Answer { ok, text, untagged: Vec::new() })
}
