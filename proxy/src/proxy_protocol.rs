//! The PROXY protocol v2 header (HAProxy's spec), sent before anything
//! else to backends that want the client's address: mail backends
//! (`[mail] proxy_protocol`) and HTTP site backends (`proxy_protocol` in a
//! site's backend entry).

use std::net::{IpAddr, SocketAddr};

/// A PROXY protocol v2 header (PROXY command, TCP) for a connection from
/// `client` to `local`.
pub fn header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
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
        let h = header("192.0.2.7:5000".parse().unwrap(), "198.51.100.1:143".parse().unwrap());
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[24..28], &[0x13, 0x88, 0, 143]);
        assert_eq!(h.len(), 28);
        let h = header("[2001:db8::1]:5000".parse().unwrap(), "198.51.100.1:143".parse().unwrap());
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
    }
}
