//! A read timeout for HTTP/2 request bodies: nginx's `client_body_timeout`
//! (`body_timeout_secs`). Pingora 0.9 times HTTP/1.1 body reads, but not
//! HTTP/2 ones: a stream whose body stalls kept its task and its backend
//! connection until the client ended it.
//!
//! [`BodyTimed`] sits on an HTTP/2 connection's decrypted stream and reads
//! the frames going by (their 9-byte headers; payloads are skipped, not
//! parsed), both ways:
//!
//! - a request `HEADERS` frame without `END_STREAM` opens a body, timed
//!   from then;
//! - payload bytes of a `DATA` frame on that stream restart its clock;
//!   `END_STREAM` (on `DATA` or on trailers) ends it;
//! - `RST_STREAM` from either side ends it: the client gave up, or edge
//!   no longer reads it (an early answer, a refused stream).
//!
//! Other frames (`PING`, `WINDOW_UPDATE`, other streams' `DATA`) do not
//! restart a stream's clock. When a body has had no data for the timeout,
//! the read fails with `TimedOut` and Pingora closes the connection, the
//! other streams on it included (HAProxy's `timeout client` also acts on
//! the connection). A stream that cannot send because edge is not reading
//! its body (the backend does not take it) stalls the same way.
//!
//! A connection with no body open pays one scan of the frame headers per
//! read and write, and no clock or timer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{Shutdown, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::connections::delegate_stream_traits;

/// The client's connection preface, before its first frame.
const PREFACE_LEN: usize = 24;
/// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
/// Bodies tracked at once. Pingora allows 100 concurrent streams; a
/// client's streams past that are refused (and reset) by the h2 crate.
const MAX_OPEN: usize = 1024;

/// A frame header seen in a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// What went by in one run of bytes.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A frame's header, complete.
    Header(Frame),
    /// Payload bytes of a `DATA` frame on this stream.
    Data(u32),
}

/// Finds the frame headers in one direction's bytes, across reads.
#[derive(Debug, Default)]
struct FrameScan {
    /// Bytes still to skip before the first frame (the client preface).
    skip: usize,
    /// A frame header read in part.
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The stream of the current frame's payload, if it is `DATA`.
    data_stream: Option<u32>,
}

impl FrameScan {
    fn new(skip: usize) -> Self {
        FrameScan { skip, ..FrameScan::default() }
    }

    /// Calls `event` for each frame header completed and each run of
    /// `DATA` payload in `bytes`.
    fn scan(&mut self, mut bytes: &[u8], mut event: impl FnMut(Event)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if let Some(stream) = self.data_stream {
                    event(Event::Data(stream));
                }
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = &self.header;
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    let frame = Frame { kind: h[3], flags: h[4], stream };
                    self.payload_left = len;
                    self.data_stream = (frame.kind == DATA).then_some(stream);
                    event(Event::Header(frame));
                }
            }
        }
    }
}

/// The request bodies still coming on a connection, each with the time
/// its last data came.
#[derive(Debug, Default)]
struct OpenBodies(Vec<(u32, Instant)>);

impl OpenBodies {
    fn find(&self, stream: u32) -> Option<usize> {
        self.0.iter().position(|(s, _)| *s == stream)
    }

    fn end(&mut self, stream: u32) {
        if let Some(i) = self.find(stream) {
            self.0.swap_remove(i);
        }
    }

    /// Applies what the client sent.
    fn client(&mut self, event: Event, now: &mut impl FnMut() -> Instant) {
        match event {
            Event::Header(Frame { kind: HEADERS, flags, stream }) => match self.find(stream) {
                // Trailers end the body.
                Some(i) if flags & END_STREAM != 0 => {
                    self.0.swap_remove(i);
                }
                Some(_) => {}
                None if flags & END_STREAM == 0 && stream != 0 && self.0.len() < MAX_OPEN => {
                    self.0.push((stream, now()));
                }
                None => {}
            },
            Event::Header(Frame { kind: DATA, flags, stream }) => {
                if let Some(i) = self.find(stream) {
                    if flags & END_STREAM != 0 {
                        self.0.swap_remove(i);
                    } else {
                        self.0[i].1 = now();
                    }
                }
            }
            Event::Header(Frame { kind: RST_STREAM, stream, .. }) => self.end(stream),
            Event::Header(_) => {}
            Event::Data(stream) => {
                if let Some(i) = self.find(stream) {
                    self.0[i].1 = now();
                }
            }
        }
    }

    /// Applies what edge sent: a reset ends the stream's body.
    fn server(&mut self, event: Event) {
        if let Event::Header(Frame { kind: RST_STREAM, stream, .. }) = event {
            self.end(stream);
        }
    }

    /// When the body that has waited longest runs out of time.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.0.iter().map(|(_, last)| *last).min().map(|last| last + timeout)
    }
}

/// An HTTP/2 client connection whose request bodies must keep coming.
pub(super) struct BodyTimed {
    inner: Stream,
    timeout: Duration,
    read: FrameScan,
    written: FrameScan,
    open: OpenBodies,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: bool,
    /// `edge_http_limited_total{limit="body_timeout"}`.
    late: prometheus::IntCounter,
}

impl BodyTimed {
    /// `inner`: the connection after its TLS handshake chose `h2`, before
    /// the client preface was read.
    pub(super) fn new(inner: Stream, timeout: Duration, late: prometheus::IntCounter) -> Self {
        BodyTimed {
            inner,
            timeout,
            read: FrameScan::new(PREFACE_LEN),
            written: FrameScan::new(0),
            open: OpenBodies::default(),
            sleep: None,
            expired: false,
            late,
        }
    }

    /// Scans what edge wrote: the first `n` bytes of `bufs`.
    fn wrote<'b>(&mut self, bufs: impl IntoIterator<Item = &'b [u8]>, mut n: usize) {
        let (open, written) = (&mut self.open, &mut self.written);
        for b in bufs {
            let take = n.min(b.len());
            written.scan(&b[..take], |e| open.server(e));
            n -= take;
            if n == 0 {
                break;
            }
        }
    }

    fn timed_out(&mut self) -> io::Error {
        self.expired = true;
        self.late.inc();
        tracing::debug!("http2: a request body sent nothing for {:?}; connection closed", self.timeout);
        io::Error::new(io::ErrorKind::TimedOut, format!("request body: no data for {:?}", self.timeout))
    }
}

impl std::fmt::Debug for BodyTimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyTimed").field("inner", &self.inner).field("open", &self.open).finish_non_exhaustive()
    }
}

impl AsyncRead for BodyTimed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request body timed out")));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let (open, read) = (&mut this.open, &mut this.read);
                let mut now = None;
                let mut clock = || *now.get_or_insert_with(Instant::now);
                read.scan(&buf.filled()[before..], |e| open.client(e, &mut clock));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.open.deadline(this.timeout) else {
                    return Poll::Pending;
                };
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for BodyTimed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote([buf], n);
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(bufs.iter().map(|b| &**b), n);
        }
        written
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for BodyTimed {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

delegate_stream_traits!(BodyTimed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PING: u8 = 0x6;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let len = (payload as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(9 + payload, 0xaa);
        f
    }

    fn events(scan: &mut FrameScan, bytes: &[u8]) -> Vec<Event> {
        let mut seen = Vec::new();
        scan.scan(bytes, |e| seen.push(e));
        seen
    }

    #[test]
    fn frames_are_found_across_reads_after_the_preface() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(4, 0, 0, 6));
        bytes.extend(frame(HEADERS, 4, 1, 20));
        bytes.extend(frame(DATA, END_STREAM, 1, 300));
        let mut scan = FrameScan::new(PREFACE_LEN);
        let mut seen = Vec::new();
        // One byte at a time, then the rest at once: the same frames.
        for b in &bytes[..40] {
            seen.extend(events(&mut scan, std::slice::from_ref(b)));
        }
        seen.extend(events(&mut scan, &bytes[40..]));
        let headers: Vec<Frame> =
            seen.iter().filter_map(|e| if let Event::Header(f) = e { Some(*f) } else { None }).collect();
        assert_eq!(
            headers,
            vec![
                Frame { kind: 4, flags: 0, stream: 0 },
                Frame { kind: HEADERS, flags: 4, stream: 1 },
                Frame { kind: DATA, flags: END_STREAM, stream: 1 },
            ]
        );
        assert_eq!(seen.last(), Some(&Event::Data(1)), "the DATA payload");
        assert!(!seen.iter().any(|e| matches!(e, Event::Data(s) if *s != 1)));
        // The high bit of the stream field is reserved, not the stream's.
        let mut f = frame(DATA, 0, 3, 0);
        f[5] |= 0x80;
        assert_eq!(events(&mut FrameScan::new(0), &f), vec![Event::Header(Frame { kind: DATA, flags: 0, stream: 3 })]);
    }

    #[test]
    fn a_body_is_open_from_its_headers_until_its_end_or_a_reset() {
        let t0 = Instant::now();
        let mut open = OpenBodies::default();
        let mut clock = || t0;
        let h = |kind, flags, stream| Event::Header(Frame { kind, flags, stream });
        open.client(h(HEADERS, END_STREAM, 1), &mut clock);
        assert!(open.0.is_empty(), "a GET has no body");
        for s in [3, 5, 7, 9] {
            open.client(h(HEADERS, 4, s), &mut clock);
        }
        assert_eq!(open.0.len(), 4);
        open.client(h(DATA, END_STREAM, 3), &mut clock);
        open.client(h(HEADERS, END_STREAM | 4, 5), &mut clock);
        open.client(h(RST_STREAM, 0, 7), &mut clock);
        assert_eq!(open.0, vec![(9, t0)], "ended by its last DATA, by trailers, by the client's reset");
        open.server(h(RST_STREAM, 0, 9));
        assert!(open.0.is_empty(), "edge reset it");
        assert_eq!(open.deadline(Duration::from_secs(1)), None);
        // Its own data restarts a body's clock; other frames do not.
        open.client(h(HEADERS, 4, 11), &mut clock);
        open.client(h(HEADERS, 4, 13), &mut clock);
        let t1 = t0 + Duration::from_secs(5);
        let mut later = || t1;
        open.client(h(PING, 0, 0), &mut later);
        open.client(h(DATA, 0, 15), &mut later);
        open.client(h(HEADERS, 0, 11), &mut later);
        open.server(h(DATA, 0, 11));
        assert_eq!(open.deadline(Duration::from_secs(1)), Some(t0 + Duration::from_secs(1)));
        open.client(h(DATA, 0, 11), &mut later);
        open.client(Event::Data(13), &mut later);
        assert_eq!(open.deadline(Duration::from_secs(1)), Some(t1 + Duration::from_secs(1)));
    }

    fn timed(timeout_ms: u64) -> (BodyTimed, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        (BodyTimed::new(Box::new(ours), Duration::from_millis(timeout_ms), counter), theirs)
    }

    /// Reads from `s` until it fails or `within` passes.
    async fn read_until_error(s: &mut BodyTimed, within: Duration) -> Option<io::Error> {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Err(e)) => return Some(e),
                Ok(Ok(0)) => panic!("closed"),
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_the_connection_though_pings_keep_coming() {
        let (mut s, mut client) = timed(300);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(HEADERS, 4, 1, 30));
        hello.extend(frame(DATA, 0, 1, 100));
        client.write_all(&hello).await.unwrap();
        let started = Instant::now();
        let pings = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if client.write_all(&frame(PING, 0, 0, 8)).await.is_err() {
                    break;
                }
            }
            client
        });
        let e = read_until_error(&mut s, Duration::from_secs(3)).await.expect("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(280) && took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(s.late.get(), 1);
        drop(pings);
    }

    #[tokio::test]
    async fn a_slow_body_that_keeps_coming_and_a_reset_one_are_not_cut_off() {
        let (mut s, mut client) = timed(300);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(HEADERS, 4, 1, 30));
        hello.extend(frame(HEADERS, 4, 3, 30));
        client.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(s.read(&mut buf).await.unwrap(), hello.len());
        assert_eq!(s.open.0.len(), 2);
        // Edge resets stream 3 (in two writes, split inside the header).
        let reset = frame(RST_STREAM, 0, 3, 4);
        s.write_all(&reset[..5]).await.unwrap();
        s.write_all(&reset[5..]).await.unwrap();
        let writer = tokio::spawn(async move {
            // Stream 1's body: a DATA frame every 150 ms for 1.2 s, the
            // last one's payload trickled byte by byte.
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                client.write_all(&frame(DATA, 0, 1, 10)).await.unwrap();
            }
            let last = frame(DATA, END_STREAM, 1, 3);
            client.write_all(&last[..9]).await.unwrap();
            for b in &last[9..] {
                tokio::time::sleep(Duration::from_millis(150)).await;
                client.write_all(std::slice::from_ref(b)).await.unwrap();
            }
            client
        });
        assert_eq!(s.open.0.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1], "edge reset 3");
        assert!(read_until_error(&mut s, Duration::from_millis(2500)).await.is_none());
        assert_eq!(s.late.get(), 0);
        assert!(s.open.0.is_empty());
        drop(writer);
    }
}
