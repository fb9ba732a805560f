//! Prompt ACKs on an upstream connection while a large response comes in.
//!
//! Linux may hold back the ACK of a segment for up to 40 ms when the
//! connection is in "ping-pong" (interactive) mode and the segment is
//! smaller than the largest it has seen. A keepalive connection to a
//! backend enters that mode whenever the edge writes a request soon after
//! it read the last response, which under load is nearly every time. A
//! backend that then waits for that ACK before it sends more (its send
//! buffer is full: nginx's `sendfile` of a 100 KiB file over loopback
//! sends about 60 KB and waits) stalls the response for the whole delay.
//! In the bench this was the p99 of the 100 KiB uncached row: about 30 ms
//! at a p50 of 4 ms, with a delayed-ACK timer firing once every 300 to 400
//! responses.
//!
//! `TCP_QUICKACK` takes the socket out of ping-pong mode: the read that
//! empties its receive queue then sends the ACK at once. Writing the next
//! request can put the socket back, so it is set once a response, after
//! the request was written: when the response header has been read.
//! Responses that fit in one segment need nothing, since nothing waits for
//! their ACK: only those of [`MIN_BODY`] bytes or more, or of unknown
//! length, pay the one `setsockopt`.

use pingora::http::ResponseHeader;

/// Responses at least this long, or whose length is unknown, get prompt
/// ACKs.
pub const MIN_BODY: u64 = 16 * 1024;

/// Whether the response's body may be long enough for its backend to wait
/// on an ACK part way.
pub fn wanted(resp: &ResponseHeader) -> bool {
    let status = resp.status.as_u16();
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return false;
    }
    match resp.headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).is_none_or(|n| n >= MIN_BODY),
        None => true,
    }
}

/// For each response header from the upstream: the final one (not a 1xx,
/// which the same connection's answer follows) uses up the attempt's `fd`
/// and asks for prompt ACKs if its body [`wanted`] them.
pub fn on_upstream_header(fd: &mut Option<std::os::unix::io::RawFd>, resp: &ResponseHeader) {
    if resp.status.is_informational() {
        return;
    }
    if let Some(fd) = fd.take() {
        if wanted(resp) {
            ack_promptly(fd);
        }
    }
}

/// Takes the TCP socket `fd` out of delayed-ACK ping-pong mode (a Linux
/// option). An error (`fd` is not a TCP socket) changes nothing and is
/// only logged: the response is just slower.
///
/// `fd` must be open for the length of the call: the callers pass the
/// upstream socket Pingora holds for the response being read.
#[allow(unsafe_code)] // borrowing a raw fd; see SAFETY
pub fn ack_promptly(fd: std::os::unix::io::RawFd) {
    if fd < 0 {
        return;
    }
    // SAFETY: the caller's fd is open for the whole call (above), and the
    // borrow does not outlive it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let Err(err) = socket2::SockRef::from(&fd).set_tcp_quickack(true) {
        tracing::debug!(%err, "TCP_QUICKACK on the upstream socket failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, len: Option<&str>) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        if let Some(len) = len {
            r.insert_header("content-length", len).unwrap();
        }
        r
    }

    #[test]
    fn long_or_unknown_bodies_want_prompt_acks() {
        assert!(wanted(&resp(200, Some("102400"))));
        assert!(wanted(&resp(200, Some("16384"))));
        assert!(wanted(&resp(200, None)), "chunked or to the close: length unknown");
        assert!(wanted(&resp(200, Some("junk"))), "a length edge can't read is unknown");
        assert!(!wanted(&resp(200, Some("16383"))));
        assert!(!wanted(&resp(200, Some("1024"))));
        assert!(!wanted(&resp(304, None)));
        assert!(!wanted(&resp(204, None)));
        assert!(!wanted(&resp(101, None)));
    }

    #[test]
    fn the_fd_is_used_up_by_the_final_header_only() {
        // -1: ack_promptly ignores it; what is checked is the fd's use.
        let mut fd = Some(-1);
        on_upstream_header(&mut fd, &resp(100, None));
        assert_eq!(fd, Some(-1), "a 100 Continue: the answer is still to come");
        on_upstream_header(&mut fd, &resp(200, Some("1024")));
        assert_eq!(fd, None, "the final header, even a short one, uses it up");
        on_upstream_header(&mut fd, &resp(200, None));
        assert_eq!(fd, None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_socket_leaves_ping_pong_mode() {
        use std::io::{Read, Write};
        use std::os::unix::io::AsRawFd;

        let quickack = |s: &std::net::TcpStream| socket2::SockRef::from(s).tcp_quickack().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        // Requests sent right after answers put the client in ping-pong
        // mode (Linux reads TCP_QUICKACK back as "not in ping-pong mode").
        let mut buf = [0u8; 4];
        let mut rounds = 0;
        while quickack(&client) {
            rounds += 1;
            assert!(rounds < 50, "the socket never entered ping-pong mode");
            client.write_all(b"ping").unwrap();
            server.read_exact(&mut buf).unwrap();
            server.write_all(b"pong").unwrap();
            client.read_exact(&mut buf).unwrap();
        }
        client.write_all(b"ping").unwrap();
        ack_promptly(client.as_raw_fd());
        assert!(quickack(&client));
        // Not a socket: ignored.
        ack_promptly(-1);
        let file = std::fs::File::open("/dev/null").unwrap();
        ack_promptly(file.as_raw_fd());
    }
}
