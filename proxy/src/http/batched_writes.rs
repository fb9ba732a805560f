//! One write per poll of an HTTP/2 client connection's task.
//!
//! The `h2` crate keeps each DATA frame of 256 bytes or more aside instead
//! of copying it, and must flush the connection before it takes the next
//! frame. Under TLS every flush reaches the socket, so each HTTP/2 response
//! cost at least one TLS record write and one `sendto` of its own, where
//! HAProxy and nginx write what a round of their event loop produced at
//! once (h2load, 4 streams a connection: 1.28 `sendto` a response against
//! HAProxy's 0.25).
//!
//! [`Batched`] sits under the TLS layer of an HTTPS connection. Until
//! [`BatchSwitch::on`] (the handshake chose HTTP/2) it passes everything
//! through. Then:
//!
//! - writes are kept in a buffer (up to [`LIMIT`]; one of [`DIRECT`] bytes
//!   or more, with nothing buffered, goes straight to the socket; once
//!   written out, the buffer keeps at most [`DIRECT`] bytes of capacity);
//! - the first flush with bytes buffered does not write: it wakes the
//!   connection's task, which the runtime then polls again after the tasks
//!   already queued (the streams' tasks, which add their answers), and
//!   says the flush is done; later flushes before that poll do the same;
//! - the next read writes the buffer out, in one `sendto` where the socket
//!   takes it all.
//!
//! This relies on how `h2` drives a server connection, which is why it is
//! switched on for HTTP/2 only: every write and flush comes from the one
//! task that polls the connection, and each poll of that task reads the
//! socket before it writes. So the poll the wake brings reads, and the
//! buffer goes out then. An HTTP/1 task may instead wait on its backend
//! between writes, with its answer held back. Shutdown writes the buffer
//! out first; dropped with bytes still buffered (an idle connection closed
//! by Pingora), the stream makes one non-blocking attempt to write them.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use async_trait::async_trait;
use pingora::protocols::{Shutdown, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held back; a write beyond them writes the buffer out first.
pub const LIMIT: usize = 64 * 1024;
/// A write this large, with nothing held back, is not copied.
pub const DIRECT: usize = 16 * 1024;

/// Switches a [`Batched`] stream on once its protocol is known.
#[derive(Debug, Clone, Default)]
pub struct BatchSwitch(Arc<AtomicBool>);

impl BatchSwitch {
    pub fn on(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A client stream whose writes, once switched on, go out once a poll.
pub struct Batched {
    inner: Stream,
    switch: BatchSwitch,
    held: Vec<u8>,
    /// A flush held bytes back and woke the task: the next read writes
    /// them.
    woken: bool,
}

impl Batched {
    pub fn new(inner: Stream) -> (Batched, BatchSwitch) {
        let switch = BatchSwitch::default();
        (Batched { inner, switch: switch.clone(), held: Vec::new(), woken: false }, switch)
    }

    fn on(&self) -> bool {
        self.switch.0.load(Ordering::Acquire)
    }

    /// Writes the held bytes out.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut done = 0;
        let result = loop {
            if done == self.held.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &self.held[done..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.held.drain(..done);
        if self.held.is_empty() {
            self.woken = false;
            // An idle connection keeps a small buffer at most.
            self.held.shrink_to(DIRECT);
        }
        result
    }

    /// Makes room for `len` more bytes; `Ready(true)`: write them directly.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if !self.held.is_empty() && self.held.len() + len > LIMIT {
            ready!(self.poll_write_held(cx))?;
        }
        Poll::Ready(Ok(self.held.is_empty() && len >= DIRECT))
    }
}

impl std::fmt::Debug for Batched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batched").field("inner", &self.inner).field("held", &self.held.len()).finish()
    }
}

impl AsyncRead for Batched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.woken {
            // Pending: the socket is full, and the read goes on.
            if let Poll::Ready(Err(e)) = this.poll_write_held(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Batched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.on() || ready!(this.poll_room(cx, buf.len()))? {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if !this.on() || ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.woken {
            // Polled again after the tasks queued now; its read writes.
            cx.waker().wake_by_ref();
            this.woken = true;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Drop for Batched {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let _ = self.poll_write_held(&mut Context::from_waker(Waker::noop()));
        }
    }
}

#[async_trait]
impl Shutdown for Batched {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_write_held(cx)).await;
        self.inner.shutdown().await
    }
}

super::connections::delegate_stream_traits!(Batched);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A stream that counts the writes that reach it.
    #[derive(Debug)]
    struct Counted {
        inner: Stream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(r, Poll::Ready(Ok(_))) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[async_trait]
    impl Shutdown for Counted {
        async fn shutdown(&mut self) {}
    }

    crate::http::connections::delegate_stream_traits!(Counted);

    /// A batched stream over a pipe of `capacity` bytes, switched on or
    /// not; the count of writes that reached the pipe; its other end.
    fn batched(on: bool, capacity: usize) -> (Batched, Arc<AtomicUsize>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        let writes = Arc::new(AtomicUsize::new(0));
        let (b, switch) = Batched::new(Box::new(Counted { inner: Box::new(ours), writes: Arc::clone(&writes) }));
        if on {
            switch.on();
        }
        (b, writes, theirs)
    }

    /// Writes and flushes each part within one poll of the task, as h2
    /// does with the frames of several streams; each call must be ready.
    async fn write_and_flush_in_one_poll(b: &mut Batched, parts: &[&[u8]]) {
        std::future::poll_fn(|cx| {
            for part in parts {
                assert!(matches!(Pin::new(&mut *b).poll_write(cx, part), Poll::Ready(Ok(n)) if n == part.len()));
                assert!(matches!(Pin::new(&mut *b).poll_flush(cx), Poll::Ready(Ok(()))));
            }
            Poll::Ready(())
        })
        .await
    }

    /// Polls a read once (it may find nothing to read).
    async fn poll_read_once(b: &mut Batched) {
        std::future::poll_fn(|cx| {
            let mut space = [0u8; 16];
            let _ = Pin::new(&mut *b).poll_read(cx, &mut ReadBuf::new(&mut space));
            Poll::Ready(())
        })
        .await
    }

    async fn read_exactly(peer: &mut DuplexStream, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        tokio::time::timeout(std::time::Duration::from_secs(2), peer.read_exact(&mut got)).await.unwrap().unwrap();
        got
    }

    #[tokio::test]
    async fn switched_off_every_write_goes_straight_through() {
        let (mut b, writes, mut peer) = batched(false, 1 << 16);
        write_and_flush_in_one_poll(&mut b, &[b"one ", b"two"]).await;
        assert_eq!(writes.load(Ordering::Relaxed), 2);
        assert_eq!(read_exactly(&mut peer, 7).await, b"one two");
    }

    #[tokio::test]
    async fn a_polls_flushes_go_out_in_one_write_at_the_next_read() {
        let (mut b, writes, mut peer) = batched(true, 1 << 16);
        let (woken, waker) = counted_waker();
        let mut cx = Context::from_waker(&waker);
        for part in [&b"frame 1 "[..], b"frame 2 ", b"frame 3"] {
            assert!(matches!(Pin::new(&mut b).poll_write(&mut cx, part), Poll::Ready(Ok(n)) if n == part.len()));
            assert!(matches!(Pin::new(&mut b).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        }
        assert_eq!(writes.load(Ordering::Relaxed), 0, "held");
        assert_eq!(woken.load(Ordering::Relaxed), 1, "the task is woken once for the three flushes");
        // The poll the wake brings reads first: that writes them all.
        let mut space = [0u8; 16];
        assert!(Pin::new(&mut b).poll_read(&mut cx, &mut ReadBuf::new(&mut space)).is_pending());
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        assert_eq!(read_exactly(&mut peer, 23).await, b"frame 1 frame 2 frame 3");
        // The next flush wakes again.
        write_and_flush_in_one_poll(&mut b, &[b"frame 4"]).await;
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        poll_read_once(&mut b).await;
        assert_eq!(writes.load(Ordering::Relaxed), 2);
        assert_eq!(read_exactly(&mut peer, 7).await, b"frame 4");
    }

    /// A waker that counts its wakes.
    fn counted_waker() -> (Arc<AtomicUsize>, Waker) {
        struct Counter(Arc<AtomicUsize>);
        impl std::task::Wake for Counter {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(AtomicUsize::new(0));
        (Arc::clone(&count), Waker::from(Arc::new(Counter(Arc::clone(&count)))))
    }

    #[tokio::test]
    async fn a_flush_wakes_the_task_that_then_writes() {
        // Through the runtime: the flush's wake brings the task back, and
        // its read writes.
        let (mut b, writes, mut peer) = batched(true, 1 << 16);
        let writer = tokio::spawn(async move {
            b.write_all(b"answer").await.unwrap();
            b.flush().await.unwrap();
            // Pending once, with no waker kept: only the flush's wake
            // polls the task again.
            let mut once = false;
            std::future::poll_fn(|_| if std::mem::replace(&mut once, true) { Poll::Ready(()) } else { Poll::Pending })
                .await;
            let mut space = [0u8; 1];
            let _ = b.read(&mut space).await;
        });
        assert_eq!(read_exactly(&mut peer, 6).await, b"answer");
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        writer.abort();
    }

    #[tokio::test]
    async fn large_writes_are_not_copied_and_order_is_kept() {
        let (mut b, writes, mut peer) = batched(true, 1 << 20);
        let large = vec![b'L'; DIRECT];
        // Nothing held: straight to the pipe.
        write_and_flush_in_one_poll(&mut b, &[&large]).await;
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        // Held bytes and more than the limit: the held ones go first.
        let huge = vec![b'H'; LIMIT];
        write_and_flush_in_one_poll(&mut b, &[b"small", &huge]).await;
        assert_eq!(writes.load(Ordering::Relaxed), 3);
        let mut want = large.clone();
        want.extend_from_slice(b"small");
        want.extend_from_slice(&huge);
        assert_eq!(read_exactly(&mut peer, want.len()).await, want);
    }

    #[tokio::test]
    async fn a_full_pipe_holds_the_writer_back_and_loses_nothing() {
        let (mut b, _, mut peer) = batched(true, 4096);
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        for chunk in sent.chunks(1000) {
            b.write_all(chunk).await.unwrap();
            b.flush().await.unwrap();
        }
        AsyncWriteExt::shutdown(&mut b).await.unwrap();
        assert!(b.held.capacity() <= DIRECT, "the buffer shrinks once written out");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await.unwrap().unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes arrive in order");
    }

    #[tokio::test]
    async fn shutdown_and_drop_write_what_is_held() {
        let (mut b, _, mut peer) = batched(true, 1 << 16);
        write_and_flush_in_one_poll(&mut b, &[b"last words"]).await;
        AsyncWriteExt::shutdown(&mut b).await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");

        let (mut b, _, mut peer) = batched(true, 1 << 16);
        write_and_flush_in_one_poll(&mut b, &[b"goaway"]).await;
        drop(b);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"goaway");
    }
}
