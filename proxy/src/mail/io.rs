//! A mail connection: a TCP stream, maybe upgraded to TLS, with a read
//! buffer the protocol code reads lines from. STARTTLS drops that buffer
//! (anything pipelined in plaintext after the command is discarded).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The transport under a connection.
pub enum Stream {
    Plain(TcpStream),
    /// TLS the edge terminates (client side of the edge).
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to a backend.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("connection closed")]
    Closed,
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl LineError {
    /// A backend said something the dialogue did not expect.
    pub fn unexpected(what: &str, line: &[u8]) -> LineError {
        let line = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        LineError::Io(io::Error::other(format!("unexpected {what} from the backend: {line}")))
    }
}

/// A connection with its read buffer.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: Stream) -> Self {
        Self { stream, buf: Vec::with_capacity(1024) }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self.stream, Stream::Plain(_))
    }

    /// The bytes read and not yet used.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }

    /// Reads more bytes into the buffer; `Closed` at end of stream.
    pub async fn fill(&mut self) -> Result<(), LineError> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(LineError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next line without its line ending (CRLF, or a bare LF), at most
    /// `max` bytes with the ending.
    pub async fn read_line(&mut self, max: usize) -> Result<Vec<u8>, LineError> {
        let mut from = 0;
        loop {
            if let Some(at) = self.buf[from..].iter().position(|&b| b == b'\n') {
                let end = from + at;
                if end + 1 > max {
                    return Err(LineError::TooLong(max));
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() >= max {
                return Err(LineError::TooLong(max));
            }
            from = self.buf.len();
            self.fill().await?;
        }
    }

    /// Writes and flushes.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    /// STARTTLS as the server: what the client pipelined after the command
    /// is discarded; the handshake runs on the bare TCP stream.
    pub async fn accept_tls(self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<Conn> {
        let Stream::Plain(tcp) = self.stream else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = acceptor.accept(tcp).await?;
        Ok(Conn::new(Stream::Server(Box::new(tls))))
    }

    /// STARTTLS as the client, towards a backend: what the backend sent
    /// after its answer is discarded.
    pub async fn connect_tls(self, config: &Arc<rustls::ClientConfig>, name: ServerName<'static>) -> io::Result<Conn> {
        let Stream::Plain(tcp) = self.stream else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?;
        Ok(Conn::new(Stream::Client(Box::new(tls))))
    }

    pub fn into_parts(self) -> (Stream, Vec<u8>) {
        (self.stream, self.buf)
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
