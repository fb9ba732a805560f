//! PROXY protocol v2 towards HTTP backends (a site's backend entry with
//! `proxy_protocol: true`). Pingora 0.9's connector has no option for it,
//! but a peer may carry its own L4 connector: this one connects, writes the
//! header for the client's connection, and hands the stream to Pingora.
//!
//! A header describes one client connection, so such upstream connections
//! are pooled per client connection (the peer's group key), never shared
//! between clients, as HAProxy does with `send-proxy-v2`.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Connects to a backend and sends the PROXY v2 header first.
#[derive(Debug)]
pub struct ProxyV2Connect {
    header: Vec<u8>,
    timeout: Duration,
}

impl ProxyV2Connect {
    /// For the client connection from `client` to the edge's `local`
    /// address; `timeout` bounds the TCP connect (Pingora's own connect
    /// timeout does not apply to a custom connector).
    pub fn new(client: SocketAddr, local: SocketAddr, timeout: Duration) -> Self {
        ProxyV2Connect { header: crate::proxy_protocol::header(client, local), timeout }
    }

    /// The pool group of upstream connections made for this client
    /// connection.
    pub fn group_key(client: SocketAddr, local: SocketAddr) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (client, local).hash(&mut h);
        h.finish()
    }
}

#[async_trait]
impl L4Connect for ProxyV2Connect {
    async fn connect(&self, addr: &PeerAddr) -> Result<Stream> {
        let Some(&inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "PROXY protocol needs a TCP backend");
        };
        let mut tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(inet)).await {
            Err(_) => return Error::e_explain(ErrorType::ConnectTimedout, format!("timeout connecting to {inet}")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Error::e_because(ErrorType::ConnectRefused, format!("connecting to {inet}"), e)
            }
            Ok(Err(e)) => return Error::e_because(ErrorType::ConnectError, format!("connecting to {inet}"), e),
            Ok(Ok(tcp)) => tcp,
        };
        if let Err(e) = tcp.write_all(&self.header).await {
            return Error::e_because(ErrorType::ConnectError, format!("sending the PROXY header to {inet}"), e);
        }
        Ok(tcp.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_header_goes_first_on_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:443".parse().unwrap();
        let connector = ProxyV2Connect::new(client, local, Duration::from_secs(2));
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 28];
            s.read_exact(&mut got).await.unwrap();
            got
        });
        let _stream = connector.connect(&PeerAddr::Inet(addr)).await.unwrap();
        assert_eq!(accept.await.unwrap(), crate::proxy_protocol::header(client, local));
        // A refused connection is a connect error (the proxy retries those).
        drop(_stream);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let e = connector.connect(&PeerAddr::Inet(closed)).await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ConnectRefused);
        assert_ne!(ProxyV2Connect::group_key(client, local), ProxyV2Connect::group_key(local, client));
    }
}
