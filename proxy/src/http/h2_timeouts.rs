//! Deadlines on HTTP/2 request headers and bodies. Pingora 0.9 times
//! neither on HTTP/2: a header left unfinished or a body that stalled kept
//! its stream (and a body its backend connection) for as long as the
//! connection lived, while any other stream kept it from the idle timeout.
//!
//! `H2Timed` sits on an HTTP/2 connection's decrypted stream and reads
//! the frames going by (their 9-byte headers; payloads are skipped, not
//! parsed), both ways:
//!
//! - **headers** (`header_timeout_secs`, as for HTTP/1.1): the client's
//!   connection preface (24 octets and the `SETTINGS` frame that follows
//!   them), then each header block (a `HEADERS` frame up to the end of the
//!   frame with `END_HEADERS`, itself or a `CONTINUATION`) must be whole
//!   within the deadline, counted from the first read that has to wait for
//!   it;
//! - **bodies** (`body_timeout_secs`, nginx's `client_body_timeout`): a
//!   request `HEADERS` frame without `END_STREAM` opens a body, timed from
//!   the end of its header block; payload bytes of a `DATA` frame on that
//!   stream restart its clock; `END_STREAM` (on `DATA` or on trailers)
//!   ends it; `RST_STREAM` from either side ends it: the client gave up,
//!   or edge no longer reads it (an early answer, a refused stream).
//!
//! Other frames (`PING`, `WINDOW_UPDATE`, other streams' `DATA`) do not
//! restart a clock. When a header or a body runs out of time, the read
//! fails with `TimedOut` and Pingora closes the connection, the other
//! streams on it included (HAProxy's `timeout client` also acts on the
//! connection). A stream that cannot send because edge is not reading its
//! body (the backend does not take it) stalls the same way.
//!
//! A connection whose headers come whole in their reads and that has no
//! body open pays one scan of the frame headers per read and write, and no
//! clock or timer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::connections::{delegate_flush_and_shutdown, delegate_shutdown, delegate_stream_traits};

/// The client's connection preface, before its first frame.
const PREFACE_LEN: usize = 24;
/// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A frame's header, complete.
    Header(Frame),
    /// Payload bytes of a `DATA` frame on this stream.
    Data(u32),
    /// The last byte of a frame's payload (right after its header when it
    /// has none).
    End(Frame),
}

/// Finds the frame headers in one direction's bytes, across reads.
#[derive(Debug)]
struct FrameScan {
    /// Bytes still to skip before the first frame (the client preface).
    skip: usize,
    /// A frame header read in part.
    header: [u8; 9],
    have: usize,
    /// The frame whose payload is coming (while `payload_left > 0`), and
    /// how much of it is to come.
    current: Frame,
    payload_left: usize,
}

impl FrameScan {
    fn new(skip: usize) -> Self {
        let current = Frame { kind: 0, flags: 0, stream: 0 };
        FrameScan { skip, header: [0; 9], have: 0, current, payload_left: 0 }
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
                if self.current.kind == DATA {
                    event(Event::Data(self.current.stream));
                }
                if self.payload_left == 0 {
                    event(Event::End(self.current));
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
                    (self.current, self.payload_left) = (frame, len);
                    event(Event::Header(frame));
                    if len == 0 {
                        event(Event::End(frame));
                    }
                }
            }
        }
    }
}

/// The request bodies still coming on a connection, each with the time
/// its last data came.
#[derive(Debug, Default)]
struct OpenBodies {
    open: Vec<(u32, Instant)>,
    /// A request whose header block has no `END_STREAM` and has not ended
    /// yet: its body is timed from the block's end.
    next: Option<u32>,
}

impl OpenBodies {
    fn find(&self, stream: u32) -> Option<usize> {
        self.open.iter().position(|(s, _)| *s == stream)
    }

    fn end(&mut self, stream: u32) {
        if let Some(i) = self.find(stream) {
            self.open.swap_remove(i);
        }
    }

    /// Applies what the client sent.
    fn client(&mut self, event: Event, now: &mut impl FnMut() -> Instant) {
        match event {
            Event::Header(Frame { kind: HEADERS, flags, stream }) => match self.find(stream) {
                // Trailers end the body.
                Some(i) if flags & END_STREAM != 0 => {
                    self.open.swap_remove(i);
                }
                Some(_) => {}
                None if flags & END_STREAM == 0 && stream != 0 => self.next = Some(stream),
                None => {}
            },
            Event::Header(Frame { kind: DATA, flags, stream }) => {
                if let Some(i) = self.find(stream) {
                    if flags & END_STREAM != 0 {
                        self.open.swap_remove(i);
                    } else {
                        self.open[i].1 = now();
                    }
                }
            }
            Event::Header(Frame { kind: RST_STREAM, stream, .. }) => {
                self.end(stream);
                self.next = self.next.filter(|s| *s != stream);
            }
            Event::Header(_) | Event::End(_) => {}
            Event::Data(stream) => {
                if let Some(i) = self.find(stream) {
                    self.open[i].1 = now();
                }
            }
        }
    }

    /// A header block ended: its request's body, if one comes, is timed
    /// from now.
    fn block_ended(&mut self, now: &mut impl FnMut() -> Instant) {
        if let Some(stream) = self.next.take().filter(|_| self.open.len() < MAX_OPEN) {
            self.open.push((stream, now()));
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
        self.open.iter().map(|(_, last)| *last).min().map(|last| last + timeout)
    }
}

/// Where the client's header blocks stand. The ones being read have a
/// time once a read had to wait for their rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderBlock {
    /// The connection preface: until its first frame (its `SETTINGS`)
    /// ends.
    Preface(Option<Instant>),
    /// None is coming.
    Done,
    /// A header block is being read.
    Coming(Option<Instant>),
}

impl HeaderBlock {
    /// Applies what the client sent; whether a header block ended.
    fn saw(&mut self, event: Event) -> bool {
        match (*self, event) {
            (HeaderBlock::Preface(_), Event::End(_)) => *self = HeaderBlock::Done,
            (_, Event::Header(Frame { kind: HEADERS, .. })) => *self = HeaderBlock::Coming(None),
            (HeaderBlock::Coming(_), Event::End(Frame { kind: HEADERS | CONTINUATION, flags, .. }))
                if flags & END_HEADERS != 0 =>
            {
                *self = HeaderBlock::Done;
                return true;
            }
            _ => {}
        }
        false
    }
}

/// Applies what the client sent to its header blocks and its bodies.
fn client_event(header: &mut HeaderBlock, open: &mut OpenBodies, event: Event, now: &mut impl FnMut() -> Instant) {
    if header.saw(event) {
        open.block_ended(now);
    }
    open.client(event, now);
}

/// An HTTP/2 client connection whose request headers must come whole and
/// whose request bodies must keep coming.
pub(super) struct H2Timed {
    inner: Stream,
    header_timeout: Option<Duration>,
    body_timeout: Duration,
    read: FrameScan,
    written: FrameScan,
    header: HeaderBlock,
    open: OpenBodies,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: bool,
    /// `edge_http_limited_total{limit="header_timeout"}`.
    header_late: prometheus::IntCounter,
    /// `edge_http_limited_total{limit="body_timeout"}`.
    body_late: prometheus::IntCounter,
}

/// What [`H2Timed`] counts its late ones in.
pub(super) struct Late {
    pub header: prometheus::IntCounter,
    pub body: prometheus::IntCounter,
}

impl H2Timed {
    /// `inner`: the connection after its TLS handshake chose `h2`, before
    /// the client preface was read. `header_timeout`: `None` is off.
    pub(super) fn new(inner: Stream, header_timeout: Option<Duration>, body_timeout: Duration, late: Late) -> Self {
        H2Timed {
            inner,
            header_timeout,
            body_timeout,
            read: FrameScan::new(PREFACE_LEN),
            written: FrameScan::new(0),
            header: HeaderBlock::Preface(None),
            open: OpenBodies::default(),
            sleep: None,
            expired: false,
            header_late: late.header,
            body_late: late.body,
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

    /// The header block's deadline, its clock started by this wait if it
    /// was not yet.
    fn header_deadline(&mut self) -> Option<Instant> {
        let timeout = self.header_timeout?;
        match &mut self.header {
            HeaderBlock::Done => None,
            HeaderBlock::Preface(since) | HeaderBlock::Coming(since) => {
                Some(*since.get_or_insert_with(Instant::now) + timeout)
            }
        }
    }

    fn timed_out(&mut self, header: bool) -> io::Error {
        self.expired = true;
        let (what, timeout) = if header {
            self.header_late.inc();
            ("request header: not whole", self.header_timeout.unwrap_or_default())
        } else {
            self.body_late.inc();
            ("request body: no data", self.body_timeout)
        };
        tracing::debug!("http2: {what} within {timeout:?}; connection closed");
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} within {timeout:?}"))
    }
}

impl std::fmt::Debug for H2Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Timed").field("inner", &self.inner).field("open", &self.open).finish_non_exhaustive()
    }
}

impl AsyncRead for H2Timed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request header or body timed out")));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let (open, read, header) = (&mut this.open, &mut this.read, &mut this.header);
                let mut now = None;
                let mut clock = || *now.get_or_insert_with(Instant::now);
                read.scan(&buf.filled()[before..], |e| client_event(header, open, e, &mut clock));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let header = this.header_deadline();
                let body = this.open.deadline(this.body_timeout);
                let deadline = match (header, body) {
                    (Some(h), Some(b)) => h.min(b),
                    (Some(d), None) | (None, Some(d)) => d,
                    (None, None) => return Poll::Pending,
                };
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out(header == Some(deadline)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for H2Timed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote([buf], n);
        }
        written
    }
    delegate_flush_and_shutdown!();
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
}

delegate_shutdown!(H2Timed);
delegate_stream_traits!(H2Timed);

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

    /// The client preface, then `frames`.
    fn preface_and(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frames.iter().for_each(|f| bytes.extend(f));
        bytes
    }

    fn events(scan: &mut FrameScan, bytes: &[u8]) -> Vec<Event> {
        let mut seen = Vec::new();
        scan.scan(bytes, |e| seen.push(e));
        seen
    }

    #[test]
    fn frames_are_found_across_reads_after_the_preface() {
        let bytes = preface_and(&[frame(4, 0, 0, 6), frame(HEADERS, 4, 1, 20), frame(DATA, END_STREAM, 1, 300)]);
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
        let ends: Vec<Frame> =
            seen.iter().filter_map(|e| if let Event::End(f) = e { Some(*f) } else { None }).collect();
        assert_eq!(ends, headers, "each frame's end, after its payload");
        let n = seen.len();
        assert_eq!(seen[n - 2..], [Event::Data(1), Event::End(headers[2])], "the DATA payload, then its end");
        assert!(!seen.iter().any(|e| matches!(e, Event::Data(s) if *s != 1)));
        // The high bit of the stream field is reserved, not the stream's.
        let mut f = frame(DATA, 0, 3, 0);
        f[5] |= 0x80;
        let empty = Frame { kind: DATA, flags: 0, stream: 3 };
        assert_eq!(events(&mut FrameScan::new(0), &f), vec![Event::Header(empty), Event::End(empty)]);
    }

    #[test]
    fn a_body_is_open_from_its_header_blocks_end_until_its_end_or_a_reset() {
        let t0 = Instant::now();
        let mut open = OpenBodies::default();
        let mut clock = || t0;
        let h = |kind, flags, stream| Event::Header(Frame { kind, flags, stream });
        // A frame with no payload, after the preface: its header, then its
        // end.
        let mut block = HeaderBlock::Done;
        let mut whole = |open: &mut OpenBodies, kind, flags, stream, clock: &mut dyn FnMut() -> Instant| {
            let mut clock = || clock();
            client_event(&mut block, open, h(kind, flags, stream), &mut clock);
            client_event(&mut block, open, Event::End(Frame { kind, flags, stream }), &mut clock);
        };
        let ids = |open: &OpenBodies| open.open.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        whole(&mut open, HEADERS, END_STREAM | END_HEADERS, 1, &mut clock);
        assert!(open.open.is_empty(), "a GET has no body");
        for s in [3, 5, 7, 9] {
            whole(&mut open, HEADERS, END_HEADERS, s, &mut clock);
        }
        assert_eq!(ids(&open), [3, 5, 7, 9]);
        whole(&mut open, DATA, END_STREAM, 3, &mut clock);
        whole(&mut open, HEADERS, END_STREAM | END_HEADERS, 5, &mut clock);
        whole(&mut open, RST_STREAM, 0, 7, &mut clock);
        assert_eq!(open.open, vec![(9, t0)], "ended by its last DATA, by trailers, by the client's reset");
        open.server(h(RST_STREAM, 0, 9));
        assert!(open.open.is_empty(), "edge reset it");
        assert_eq!(open.deadline(Duration::from_secs(1)), None);
        // A header block in two frames: the body's clock starts at its end.
        let t1 = t0 + Duration::from_secs(5);
        let mut later = || t1;
        whole(&mut open, HEADERS, 0, 11, &mut clock);
        assert!(open.open.is_empty(), "the header block is not over");
        whole(&mut open, CONTINUATION, END_HEADERS, 11, &mut later);
        assert_eq!(open.open, vec![(11, t1)]);
        whole(&mut open, HEADERS, END_HEADERS, 13, &mut clock);
        // Its own data restarts a body's clock; other frames do not.
        whole(&mut open, PING, 0, 0, &mut later);
        whole(&mut open, DATA, 0, 15, &mut later);
        open.server(h(DATA, 0, 13));
        assert_eq!(open.deadline(Duration::from_secs(1)), Some(t0 + Duration::from_secs(1)));
        open.client(Event::Data(13), &mut later);
        assert_eq!(open.deadline(Duration::from_secs(1)), Some(t1 + Duration::from_secs(1)));
    }

    /// With a header deadline of `header_ms` (`None`: off) and a body
    /// timeout of `body_ms`.
    fn timed(header_ms: Option<u64>, body_ms: u64) -> (H2Timed, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let late = Late {
            header: prometheus::IntCounter::new("h", "h").unwrap(),
            body: prometheus::IntCounter::new("b", "b").unwrap(),
        };
        let header = header_ms.map(Duration::from_millis);
        (H2Timed::new(Box::new(ours), header, Duration::from_millis(body_ms), late), theirs)
    }

    /// Reads from `s` until it fails or `within` passes.
    async fn read_until_error(s: &mut H2Timed, within: Duration) -> Option<io::Error> {
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
        let (mut s, mut client) = timed(Some(300), 300);
        let hello = preface_and(&[frame(HEADERS, 4, 1, 30), frame(DATA, 0, 1, 100)]);
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
        assert_eq!(s.body_late.get(), 1);
        drop(pings);
    }

    #[tokio::test]
    async fn a_slow_body_that_keeps_coming_and_a_reset_one_are_not_cut_off() {
        let (mut s, mut client) = timed(Some(300), 300);
        let hello = preface_and(&[frame(HEADERS, 4, 1, 30), frame(HEADERS, 4, 3, 30)]);
        client.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(s.read(&mut buf).await.unwrap(), hello.len());
        assert_eq!(s.open.open.len(), 2);
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
        assert_eq!(s.open.open.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1], "edge reset 3");
        assert!(read_until_error(&mut s, Duration::from_millis(2500)).await.is_none());
        assert_eq!(s.body_late.get(), 0);
        assert!(s.open.open.is_empty());
        drop(writer);
    }

    /// A `GET`'s header block: `HEADERS` without `END_HEADERS`, the
    /// `CONTINUATION` with it, each in two parts.
    fn header_block(stream: u32) -> Vec<Vec<u8>> {
        let (headers, continuation) =
            (frame(HEADERS, END_STREAM, stream, 20), frame(CONTINUATION, END_HEADERS, stream, 10));
        vec![headers[..4].to_vec(), headers[4..].to_vec(), continuation[..12].to_vec(), continuation[12..].to_vec()]
    }

    #[tokio::test]
    async fn a_header_block_must_be_whole_in_time_and_is_not_timed_when_off() {
        let hello = preface_and(&[frame(4, 0, 0, 0)]);
        // In time: its four parts 100 ms apart, 300 ms in all, with a
        // deadline of 400 ms from the first wait.
        let (mut s, mut client) = timed(Some(400), 60_000);
        client.write_all(&hello).await.unwrap();
        let writer = tokio::spawn(async move {
            for part in header_block(1) {
                client.write_all(&part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        assert!(read_until_error(&mut s, Duration::from_millis(1000)).await.is_none());
        assert_eq!(s.header, HeaderBlock::Done);
        assert!(s.open.open.is_empty(), "END_STREAM: no body");
        drop(writer);
        // Late: a `HEADERS` frame without `END_HEADERS`, then nothing
        // (no other frame may come before its `CONTINUATION`).
        let (mut s, mut client) = timed(Some(400), 60_000);
        client.write_all(&hello).await.unwrap();
        client.write_all(&frame(HEADERS, END_STREAM, 1, 20)).await.unwrap();
        let started = Instant::now();
        let e = read_until_error(&mut s, Duration::from_secs(3)).await.expect("cut off");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(350) && took < Duration::from_millis(1500), "{took:?}");
        assert_eq!((s.header_late.get(), s.body_late.get()), (1, 0));
        drop(client);
        // Off: a header left unfinished is not timed.
        let (mut s, mut client) = timed(None, 200);
        client.write_all(&hello).await.unwrap();
        client.write_all(&header_block(1)[0]).await.unwrap();
        assert!(read_until_error(&mut s, Duration::from_millis(600)).await.is_none());
        assert_eq!(s.header_late.get(), 0);
    }

    #[tokio::test]
    async fn the_connection_preface_must_be_whole_in_time() {
        let (mut s, mut client) = timed(Some(300), 60_000);
        let hello = preface_and(&[frame(4, 0, 0, 6)]);
        client.write_all(&hello).await.unwrap();
        assert!(read_until_error(&mut s, Duration::from_millis(600)).await.is_none());
        assert_eq!(s.header, HeaderBlock::Done, "the preface and its SETTINGS are in");
        // Its first 10 octets, then nothing.
        let (mut s, mut client) = timed(Some(300), 60_000);
        client.write_all(&hello[..10]).await.unwrap();
        let started = Instant::now();
        let e = read_until_error(&mut s, Duration::from_secs(3)).await.expect("cut off");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(s.header_late.get(), 1);
    }

    /// What a scan finds, with the `DATA` payload events of one run
    /// merged (how many there are depends on how the bytes were split).
    fn merged(scan: &mut FrameScan, chunks: &[&[u8]]) -> Vec<Event> {
        let mut seen: Vec<Event> = Vec::new();
        for chunk in chunks {
            scan.scan(chunk, |e| {
                if !(matches!(e, Event::Data(_)) && seen.last() == Some(&e)) {
                    seen.push(e)
                }
            });
        }
        seen
    }

    proptest::proptest! {
        /// However the bytes are split across reads, the same frames are
        /// found, each frame's end after its payload.
        #[test]
        fn frames_do_not_depend_on_how_the_bytes_are_split(
            frames in proptest::collection::vec((0u8..10, 0u8..16, 0u32..8, 0usize..40), 0..12),
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let frames: Vec<Vec<u8>> = frames.iter().map(|&(k, f, s, n)| frame(k, f, s, n)).collect();
            let bytes = preface_and(&frames);
            let whole = merged(&mut FrameScan::new(PREFACE_LEN), &[&bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[from..c]);
                from = c;
            }
            proptest::prop_assert_eq!(&merged(&mut FrameScan::new(PREFACE_LEN), &chunks), &whole);
            let headers = whole.iter().filter(|e| matches!(e, Event::Header(_))).count();
            let ends = whole.iter().filter(|e| matches!(e, Event::End(_))).count();
            proptest::prop_assert_eq!((headers, ends), (frames.len(), frames.len()));
        }
    }
}
