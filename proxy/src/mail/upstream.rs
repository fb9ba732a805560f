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
        conn.send(&proxy_v2(client, local)).await?;
    }
    if upstream.tls == UpstreamTls::Tls {
        conn = tokio::time::timeout(timeout, conn.connect_tls(tls, server_name(backend)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    }
    Ok(conn)
}

/// A PROXY protocol v2 header (PROXY command, TCP) for a connection from
/// `client` to `local`.
pub fn proxy_v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&l.ip().octets());
        }
        (c, l) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21); // TCP over IPv6
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(c).octets());
            h.extend_from_slice(&v6(l).octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&local.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_headers() {
        let h = proxy_v2("192.0.2.7:5000".parse().unwrap(), "198.51.100.1:143".parse().unwrap());
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[24..28], &[0x13, 0x88, 0, 143]);
        assert_eq!(h.len(), 28);
        let h = proxy_v2("[2001:db8::1]:5000".parse().unwrap(), "198.51.100.1:143".parse().unwrap());
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
    }
}
