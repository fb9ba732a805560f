//! POP3 (110 with STLS, 995): the AUTHORIZATION state at the edge, the
//! login replayed upstream as `AUTH PLAIN`, then the relay.

use super::config::{ClientAddress, UpstreamTls};
use super::io::{Conn, LineError};
use super::parse::pop3::{self, Command};
use super::parse::sasl::{self, Credentials, SaslError};
use super::parse::smtp::xtext;
use super::{Client, LoggedIn, Refusal, Route};

const UPSTREAM_LINE: usize = 8192;
const SASL_LINE: usize = 12_288;

pub(super) async fn serve(client: &Client, conn: Conn) -> Result<(), LineError> {
    client.serve_preauth(preauth(client, conn)).await
}

async fn preauth(client: &Client, mut conn: Conn) -> Result<Option<LoggedIn>, LineError> {
    conn.send(format!("+OK {} ready.\r\n", client.shared.settings.hostname).as_bytes()).await?;
    let mut user: Option<Vec<u8>> = None;
    loop {
        let line = match conn.read_line(pop3::MAX_LINE.max(SASL_LINE)).await {
            Err(LineError::TooLong(_)) => {
                conn.send(b"-ERR Line too long.\r\n").await?;
                return Ok(None);
            }
            other => other?,
        };
        let command = match pop3::parse_line(&line) {
            Ok(c) => c,
            Err(reason) => {
                conn.send(format!("-ERR {reason}.\r\n").as_bytes()).await?;
                continue;
            }
        };
        let credentials = match command {
            Command::Capa => {
                let mut caps = String::from("+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n");
                caps.push_str(if conn.is_tls() { "USER\r\nSASL PLAIN\r\n" } else { "STLS\r\n" });
                caps.push_str(".\r\n");
                conn.send(caps.as_bytes()).await?;
                continue;
            }
            Command::Quit => {
                conn.send(b"+OK Logging out.\r\n").await?;
                return Ok(None);
            }
            Command::Stls if conn.is_tls() => {
                conn.send(b"-ERR TLS is already active.\r\n").await?;
                continue;
            }
            Command::Stls => {
                conn.send(b"+OK Begin TLS negotiation now.\r\n").await?;
                conn = conn.accept_tls(&client.shared.acceptor()).await?;
                user = None;
                continue;
            }
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } if !conn.is_tls() => {
                conn.send(b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n").await?;
                continue;
            }
            Command::User(name) => {
                user = Some(name);
                conn.send(b"+OK\r\n").await?;
                continue;
            }
            Command::Pass(password) => match user.take() {
                Some(name) => sasl::login(&name, &password),
                None => {
                    conn.send(b"-ERR No username given.\r\n").await?;
                    continue;
                }
            },
            Command::Auth { mechanism, initial } => {
                if mechanism != "PLAIN" {
                    conn.send(b"-ERR Unsupported authentication mechanism.\r\n").await?;
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
            Command::Noop | Command::Other(_) => {
                conn.send(b"-ERR Unknown command.\r\n").await?;
                continue;
            }
        };
        let credentials = match credentials {
            Ok(c) => c,
            Err(e) => {
                if e == SaslError::Authzid {
                    client.outcome("failed");
                }
                conn.send(format!("-ERR {}.\r\n", e.reason()).as_bytes()).await?;
                continue;
            }
        };
        match login(client, &credentials).await {
            Ok((upstream, answer, route)) if answer.starts_with("+OK") => {
                conn.send(format!("{answer}\r\n").as_bytes()).await?;
                return Ok(Some((conn, upstream, credentials.user.to_ascii_lowercase(), route)));
            }
            Ok((mut upstream, answer, _)) => {
                client.outcome("failed");
                upstream.shutdown().await;
                conn.send(format!("{answer}\r\n").as_bytes()).await?;
            }
            Err(refusal) => {
                let text = match refusal {
                    Refusal::Failed => "-ERR [AUTH] Authentication failed.".to_string(),
                    Refusal::RateLimited => "-ERR [SYS/TEMP] Too many failed logins; try again later.".to_string(),
                    Refusal::Unavailable(why) => format!("-ERR [SYS/TEMP] Temporary failure: {why}; try again later."),
                };
                conn.send(format!("{text}\r\n").as_bytes()).await?;
            }
        }
    }
}

async fn login(client: &Client, credentials: &Credentials) -> Result<(Conn, String, Route), Refusal> {
    client.login_upstream(credentials, async |up, route| backend_login(client, up, route, credentials).await).await
}

async fn backend_login(
    client: &Client,
    mut up: Conn,
    route: &Route,
    credentials: &Credentials,
) -> Result<(Conn, String), LineError> {
    let upstream = client.shared.settings.upstream(&route.backend.name);
    let greeting = up.read_line(UPSTREAM_LINE).await?;
    if !greeting.starts_with(b"+OK") {
        return Err(LineError::unexpected("greeting", &greeting));
    }
    if upstream.tls == UpstreamTls::Starttls {
        up.send(b"STLS\r\n").await?;
        let answer = up.read_line(UPSTREAM_LINE).await?;
        if !answer.starts_with(b"+OK") {
            return Err(LineError::unexpected("STLS answer", &answer));
        }
        up = client.upstream_tls(up, &route.backend).await?;
    }
    if upstream.client_address == ClientAddress::Native {
        let (ip, port) = (client.peer.ip().to_string(), client.peer.port().to_string());
        up.send(format!("XCLIENT ADDR={} PORT={}\r\n", xtext(&ip), xtext(&port)).as_bytes()).await?;
        let answer = up.read_line(UPSTREAM_LINE).await?;
        if !answer.starts_with(b"+OK") {
            tracing::debug!(backend = %route.backend.name, answer = %String::from_utf8_lossy(&answer), "pop3: XCLIENT refused");
        }
    }
    up.send(format!("AUTH PLAIN {}\r\n", sasl::encode_plain(credentials)).as_bytes()).await?;
    let answer = up.read_line(UPSTREAM_LINE).await?;
    Ok((up, String::from_utf8_lossy(&answer).into_owned()))
}
