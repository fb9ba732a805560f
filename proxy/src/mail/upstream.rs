//! Connecting to a backend's mail server: TCP with a timeout, an optional
//! PROXY protocol v2 header, and implicit TLS. STARTTLS is each protocol's
//! own dialogue (`imap.rs`, `pop3.rs`, `smtp.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use routing_table::Backend;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::config::{ClientAddress, Protocol, Upstream, UpstreamTls};
use super::io::{Conn, Stream};

/// The address and port of `backend` for `protocol`.
pub fn address(backend: &Backend, upstream: &Upstream, protocol: Protocol) -> Option<SocketAddr> {
    let port = match protocol {
        Protocol::Imap => upstream.imap_port,
        Protocol::Pop3 => upstream.pop3_port,
        Protocol::Submission => upstream.submission_port,
        Protocol::Mx => upstream.mx_port,
    };
    let ip: IpAddr = backend.ipv4().map(IpAddr::V4).or_else(|| backend.ipv6().map(IpAddr::V6))?;
    Some(SocketAddr::new(ip, port))
}

/// The name a backend's TLS certificate must carry: its table name.
pub fn server_name(backend: &Backend) -> ServerName<'static> {
    ServerName::try_from(backend.name.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(backend.addresses[0].into()))
}

/// Connects; sends the PROXY header first when the backend wants one, and
/// starts TLS at once for `tls = "tls"`.
pub async fn connect(
    addr: SocketAddr,
    backend: &Backend,
    upstream: &Upstream,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    client: SocketAddr,
    local: SocketAddr,
) -> io::Result<Conn> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out")))??;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(Stream::Plain(tcp));
    if upstream.client_address == ClientAddress::Proxy {
        conn.send(&crate::proxy_protocol::header(client, local)).await?;
    }
    if upstream.tls == UpstreamTls::Tls {
        conn = tokio::time::timeout(timeout, conn.connect_tls(tls, server_name(backend)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    }
    Ok(conn)
}
