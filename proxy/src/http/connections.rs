//! Guards on each client connection, in front of Pingora's HTTP handling.
//! Pingora 0.9 has no hook before it reads a request header (it reads with
//! a 60 s timeout per read, so a client can trickle a header for ever) and
//! no notice when a connection closes. So the proxy's Pingora app is
//! wrapped ([`Guarded`]): it sees each connection from its accept, for as
//! long as it lives, and
//!
//! - counts the client address's open connections, HTTP and HTTPS together
//!   (`max_connections_per_ip`, the shared [`crate::limits::Limits`]); a
//!   connection over the limit is closed at once, before any handshake;
//! - makes the TLS handshake of the HTTPS listeners' connections
//!   ([`super::tls`]), which Pingora accepts as plain TCP;
//! - gives each HTTP/1 request header a deadline (`header_timeout_secs`,
//!   like nginx's `client_header_timeout` or HAProxy's `timeout
//!   http-request`): from the connection for its first request, and from
//!   the first byte of each later keepalive request. The header is over at
//!   its blank line; bodies and upgraded connections are not timed here. A
//!   late header closes the connection;
//! - gives HTTP/2 connections the same deadline on their preface and each
//!   request's header block, and their request bodies a read timeout
//!   (`body_timeout_secs`): [`super::h2_timeouts`]. Pingora times HTTP/1.1
//!   body reads itself;
//! - on shutdown (and on the upgrade's hand-off), holds back Pingora's
//!   cleanup, which closes every connection waiting for a request, until
//!   the HTTP/1 connections still waiting for their *first* request have
//!   had it (at most the header deadline, 10 s without one). They were
//!   accepted before the listeners closed, and their client may have sent
//!   the request already: closing them reset it.
//!   Idle keepalive connections are closed as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The proxy's Pingora app `A` with the connection guards.
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: Option<crate::limits::Limits>,
    header_timeout: Option<Duration>,
    body_timeout: Duration,
    /// `edge_http_limited_total{limit="connections"}`,
    /// `{limit="header_timeout"}` and `{limit="body_timeout"}`.
    refused: prometheus::IntCounter,
    header_late: prometheus::IntCounter,
    body_late: prometheus::IntCounter,
    /// HTTP/1 connections waiting for their first request: until its
    /// header is read (without a header deadline: until it is done).
    fresh: Arc<Fresh>,
    /// The handshakes of the HTTPS listeners, which Pingora serves as
    /// plain TCP.
    tls: Option<super::tls::Tls>,
}

/// How long the shutdown's cleanup waits for first requests when there is
/// no header deadline.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(10);

impl<A> Guarded<A> {
    pub fn new(
        inner: A,
        max_per_ip: usize,
        header_timeout: Option<Duration>,
        body_timeout: Duration,
        limited: IntCounterVec,
        tls: Option<super::tls::Tls>,
    ) -> Self {
        let limits = (max_per_ip > 0).then(|| crate::limits::Limits::new(max_per_ip, u32::MAX));
        let refused = limited.with_label_values(&["connections"]);
        let header_late = limited.with_label_values(&["header_timeout"]);
        let body_late = limited.with_label_values(&["body_timeout"]);
        Guarded {
            inner: Arc::new(inner),
            limits,
            header_timeout,
            body_timeout,
            refused,
            header_late,
            body_late,
            fresh: Arc::default(),
            tls,
        }
    }
}

/// A count of connections, with a wake-up when it reaches zero.
#[derive(Default)]
struct Fresh {
    count: std::sync::atomic::AtomicUsize,
    none: tokio::sync::Notify,
}

/// One connection counted in [`Fresh`] while it lives.
struct FreshGuard(Arc<Fresh>);

impl Fresh {
    fn enter(self: &Arc<Self>) -> FreshGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        FreshGuard(Arc::clone(self))
    }

    /// Resolves once no connection is counted.
    async fn none_left(&self) {
        loop {
            let notified = self.none.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for FreshGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let client = digest.as_ref().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let ip = client.map(|a| a.ip());
        // Held for the connection's whole life: this call loops over its
        // keepalive requests and returns when it closes.
        let _counted = match (&self.limits, ip) {
            (Some(limits), Some(ip)) => match limits.connect(ip) {
                Some(c) => Some(c),
                None => {
                    self.refused.inc();
                    tracing::debug!(client = %ip, "http: too many connections from this address; closed");
                    return None;
                }
            },
            _ => None,
        };
        // An HTTPS listener's connection: its handshake, under the limit
        // above.
        let stream = match &self.tls {
            Some(tls) => {
                let local = digest.as_ref().and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
                match tls.listener(local) {
                    Some(acceptor) => tls.accept(acceptor, stream, client).await?,
                    None => stream,
                }
            }
            None => stream,
        };
        // HTTP/2 connections live on in one call of Pingora's; they are not
        // waiting for a first request the way HTTP/1 ones are.
        let h2 = matches!(stream.selected_alpn_proto(), Some(pingora::protocols::ALPN::H2));
        let mut first = (!h2).then(|| self.fresh.enter());
        let (mut stream, rearm): (Stream, _) = match self.header_timeout {
            // The preface and each header block are timed with the bodies.
            _ if h2 => {
                let late = super::h2_timeouts::Late { header: self.header_late.clone(), body: self.body_late.clone() };
                (Box::new(super::h2_timeouts::H2Timed::new(stream, self.header_timeout, self.body_timeout, late)), None)
            }
            Some(timeout) => {
                let mut timed = HeaderTimed::new(stream, timeout, self.header_late.clone());
                // Counted until the first header's blank line, not for the
                // whole first request (which may be a long download or an
                // upgraded connection).
                timed.first = first.take();
                let rearm = Arc::clone(&timed.rearm);
                (Box::new(timed), Some(rearm))
            }
            None => (stream, None),
        };
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
            drop(first.take());
            // A keepalive request follows: its header is timed from its
            // first byte.
            if let Some(r) = &rearm {
                r.store(true, Ordering::Release);
            }
        }
    }

    /// Called once the listeners are closed. Pingora's cleanup closes the
    /// connections waiting for a request; those waiting for their first
    /// get until the header deadline to send it. Requests read after the
    /// shutdown began get `Connection: close` (Pingora), so nothing waits
    /// longer than that, and the drain period bounds it all.
    async fn cleanup(&self) {
        let wait = self.header_timeout.unwrap_or(FIRST_REQUEST_WAIT);
        if tokio::time::timeout(wait, self.fresh.none_left()).await.is_err() {
            tracing::debug!("http: shutdown: connections still without a first request are closed");
        }
        self.inner.cleanup().await;
    }
}

/// Where a connection's header deadline stands.
enum Phase {
    /// Between requests, or after a header: not timed.
    Off,
    /// A keepalive request may come: timed from its first byte.
    WaitFirstByte,
    /// Reading a header: it must end by `deadline`. The timer is made only
    /// when a read has to wait (most headers come whole in their first
    /// read, and a timer a request was an allocation a request).
    Header { deadline: Instant, sleep: Option<Pin<Box<Sleep>>> },
}

impl Phase {
    fn header_from_now(timeout: Duration) -> Phase {
        Phase::Header { deadline: Instant::now() + timeout, sleep: None }
    }
}

/// A client stream whose request headers must arrive in time.
struct HeaderTimed {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    /// Set by [`Guarded`] when the connection goes back for another
    /// request.
    rearm: Arc<AtomicBool>,
    /// The last bytes read, to see a header's blank line across reads.
    tail: u32,
    late: prometheus::IntCounter,
    /// Counts the connection as waiting for its first request, until its
    /// first header is read (or is late).
    first: Option<FreshGuard>,
}

impl HeaderTimed {
    fn new(inner: Stream, timeout: Duration, late: prometheus::IntCounter) -> Self {
        let phase = Phase::header_from_now(timeout);
        HeaderTimed { inner, timeout, phase, rearm: Arc::new(AtomicBool::new(false)), tail: 0, late, first: None }
    }

    /// Looks for the header's end (CRLF CRLF, or LF LF) in what was read.
    fn saw(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            self.tail = (self.tail << 8) | u32::from(b);
            if self.tail == 0x0d0a_0d0a || self.tail & 0xffff == 0x0a0a {
                self.tail = 0;
                return true;
            }
        }
        false
    }
}

impl std::fmt::Debug for HeaderTimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderTimed").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl AsyncRead for HeaderTimed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.rearm.swap(false, Ordering::AcqRel) {
            this.phase = Phase::WaitFirstByte;
            this.tail = 0;
        }
        if matches!(this.phase, Phase::Off) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled().len();
                if filled > before {
                    if matches!(this.phase, Phase::WaitFirstByte) {
                        this.phase = Phase::header_from_now(this.timeout);
                    }
                    if this.saw(&buf.filled()[before..filled]) {
                        this.phase = Phase::Off;
                        this.first = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let late = match &mut this.phase {
                    Phase::Header { deadline, sleep } => {
                        let deadline = *deadline;
                        sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
                            .as_mut()
                            .poll(cx)
                            .is_ready()
                    }
                    _ => false,
                };
                if !late {
                    return Poll::Pending;
                }
                this.late.inc();
                this.phase = Phase::Off;
                this.first = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("request header not complete within {:?}", this.timeout),
                )))
            }
        }
    }
}

/// In the `AsyncWrite` impl of a wrapper of a stream in its `inner` field:
/// `poll_flush`, `poll_shutdown` and `is_write_vectored`, passed through.
macro_rules! delegate_flush_and_shutdown {
    () => {
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.inner), cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.inner), cx)
        }
        fn is_write_vectored(&self) -> bool {
            tokio::io::AsyncWrite::is_write_vectored(&self.inner)
        }
    };
}
pub(super) use delegate_flush_and_shutdown;

/// Pingora's `Shutdown` for a wrapper of a stream in its `inner` field,
/// passed through.
macro_rules! delegate_shutdown {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl pingora::protocols::Shutdown for $t {
            async fn shutdown(&mut self) {
                pingora::protocols::Shutdown::shutdown(&mut *self.inner).await
            }
        }
    };
}
pub(super) use delegate_shutdown;

impl AsyncWrite for HeaderTimed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    delegate_flush_and_shutdown!();
}

delegate_shutdown!(HeaderTimed);

/// Pingora's stream traits that a wrapper of a [`Stream`] in its `inner`
/// field passes through (all but the reads, the writes and `Shutdown`).
macro_rules! delegate_stream_traits {
    ($t:ty) => {
        impl pingora::protocols::UniqueID for $t {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                pingora::protocols::UniqueID::id(&*self.inner)
            }
        }

        impl pingora::protocols::Ssl for $t {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                pingora::protocols::Ssl::get_ssl(&*self.inner)
            }
            fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
                pingora::protocols::Ssl::get_ssl_digest(&*self.inner)
            }
            fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
                pingora::protocols::Ssl::selected_alpn_proto(&*self.inner)
            }
        }

        impl pingora::protocols::GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                pingora::protocols::GetTimingDigest::get_timing_digest(&*self.inner)
            }
            fn get_read_pending_time(&self) -> std::time::Duration {
                pingora::protocols::GetTimingDigest::get_read_pending_time(&*self.inner)
            }
            fn get_write_pending_time(&self) -> std::time::Duration {
                pingora::protocols::GetTimingDigest::get_write_pending_time(&*self.inner)
            }
        }

        impl pingora::protocols::GetProxyDigest for $t {
            fn get_proxy_digest(&self) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                pingora::protocols::GetProxyDigest::get_proxy_digest(&*self.inner)
            }
            fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
                pingora::protocols::GetProxyDigest::set_proxy_digest(&mut *self.inner, digest)
            }
        }

        impl pingora::protocols::GetSocketDigest for $t {
            fn get_socket_digest(&self) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                pingora::protocols::GetSocketDigest::get_socket_digest(&*self.inner)
            }
            fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
                pingora::protocols::GetSocketDigest::set_socket_digest(&mut *self.inner, digest)
            }
        }

        #[async_trait::async_trait]
        impl pingora::protocols::Peek for $t {
            async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
                pingora::protocols::Peek::try_peek(&mut *self.inner, buf).await
            }
        }
    };
}
pub(super) use delegate_stream_traits;

delegate_stream_traits!(HeaderTimed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timed(timeout_ms: u64) -> (HeaderTimed, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(4096);
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        (HeaderTimed::new(Box::new(ours), Duration::from_millis(timeout_ms), counter), theirs)
    }

    #[tokio::test]
    async fn the_cleanup_waits_until_no_first_request_is_pending() {
        let fresh = Arc::new(Fresh::default());
        fresh.none_left().await;
        let a = fresh.enter();
        let b = fresh.enter();
        let wait = tokio::spawn({
            let fresh = Arc::clone(&fresh);
            async move { fresh.none_left().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!wait.is_finished(), "one connection is still waiting");
        drop(b);
        tokio::time::timeout(Duration::from_secs(2), wait).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_first_header_ends_the_wait_for_a_first_request() {
        let fresh = Arc::new(Fresh::default());
        let (mut s, mut client) = timed(1000);
        s.first = Some(fresh.enter());
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(fresh.count.load(Ordering::Acquire), 1, "the header is not over");
        client.write_all(b"\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(fresh.count.load(Ordering::Acquire), 0, "the header is over");
    }

    #[tokio::test]
    async fn a_header_trickled_past_the_deadline_is_cut_off() {
        let (mut s, mut client) = timed(200);
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        client.write_all(b"X-A: 1\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0, "in time");
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(s.late.get(), 1);
    }

    #[tokio::test]
    async fn a_whole_header_stops_the_clock_and_keepalive_waits_for_a_first_byte() {
        let (mut s, mut client) = timed(100);
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        client.write_all(b"\n\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        // A body, slowly: not timed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"body").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        // Keepalive: idle is not counted, the next header is.
        s.rearm.store(true, Ordering::Release);
        let idle = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"GET /2 HTTP/1.1\r\n").await.unwrap();
            client
        });
        assert!(s.read(&mut buf).await.unwrap() > 0, "the idle wait did not count");
        let _client = idle.await.unwrap();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "the second header never ended");
    }
}
