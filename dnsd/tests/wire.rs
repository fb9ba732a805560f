//! What `dig` cannot send: hand-made packets (two OPT records, two
//! questions, garbage), TCP pipelining, the TCP connection limit and idle
//! timeout, and answers read while the table changes underneath.

mod support;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use support::TestDns;

/// A query for `name` (type A, class IN) with ID `id`: header and question.
fn query(id: u16, name: &str, qdcount: u16, arcount: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00]); // RD
    p.extend_from_slice(&qdcount.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(&arcount.to_be_bytes());
    for _ in 0..qdcount {
        for label in name.split('.') {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
    }
    p
}

/// An OPT record (EDNS version 0, payload 1232).
fn opt() -> [u8; 11] {
    [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]
}

fn udp_exchange(dns: &TestDns, packet: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    s.send_to(packet, dns.addr).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).expect("every reply parses"))
}

#[test]
fn malformed_queries_get_formerr_and_responses_get_nothing() {
    let dns = TestDns::start("");
    // Two OPT records.
    let mut p = query(7, "alice_wp.mysql.mayfirst.local", 1, 2);
    p.extend_from_slice(&opt());
    p.extend_from_slice(&opt());
    let r = udp_exchange(&dns, &p).expect("an answer");
    assert_eq!((r.metadata.id, r.metadata.response_code), (7, ResponseCode::FormErr));
    // Two questions.
    let r = udp_exchange(&dns, &query(8, "alice_wp.mysql.mayfirst.local", 2, 0)).unwrap();
    assert_eq!((r.metadata.id, r.metadata.response_code), (8, ResponseCode::FormErr));
    // A question cut short.
    let mut p = query(9, "alice_wp.mysql.mayfirst.local", 1, 0);
    p.truncate(p.len() - 3);
    let r = udp_exchange(&dns, &p).unwrap();
    assert_eq!((r.metadata.id, r.metadata.response_code), (9, ResponseCode::FormErr));
    // A label pointing at itself.
    let mut p = query(10, "x", 1, 0);
    p.truncate(12);
    p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let r = udp_exchange(&dns, &p).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Runts and responses are not answered at all.
    assert!(udp_exchange(&dns, &[1, 2, 3]).is_none());
    let mut p = query(11, "alice_wp.mysql.mayfirst.local", 1, 0);
    p[2] |= 0x80;
    assert!(udp_exchange(&dns, &p).is_none());
    // And the server still answers.
    let r = udp_exchange(&dns, &query(12, "alice_wp.mysql.mayfirst.local", 1, 0)).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    assert!(r.edns.is_none(), "no OPT unless the query had one");
}

fn read_framed(s: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn framed(p: &[u8]) -> Vec<u8> {
    let mut out = (p.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(p);
    out
}

#[test]
fn tcp_answers_pipelined_queries_in_order() {
    let dns = TestDns::start("");
    let mut s = TcpStream::connect(dns.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Three queries in one write, before reading anything.
    let mut all = Vec::new();
    for (id, name) in [(1, "alice_wp.mysql.mayfirst.local"), (2, "nobody.mayfirst.local"), (3, "mosh40.mayfirst.local")]
    {
        all.extend(framed(&query(id, name, 1, 0)));
    }
    s.write_all(&all).unwrap();
    let ids: Vec<(u16, ResponseCode)> = (0..3)
        .map(|_| {
            let m = read_framed(&mut s);
            (m.metadata.id, m.metadata.response_code)
        })
        .collect();
    assert_eq!(ids, [(1, ResponseCode::NoError), (2, ResponseCode::NXDomain), (3, ResponseCode::NoError)]);
}

#[test]
fn tcp_connections_are_limited_and_idle_ones_closed() {
    let dns = TestDns::start("tcp_max_connections = 2\ntcp_idle_timeout_secs = 1\n");
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(dns.addr).unwrap()).collect();
    // Both are served.
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&framed(&query(1, "mosh12.mayfirst.local", 1, 0))).unwrap();
        assert_eq!(read_framed(s).metadata.response_code, ResponseCode::NoError);
    }
    // A third is closed at once.
    let mut third = TcpStream::connect(dns.addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = third.write_all(&framed(&query(1, "mosh12.mayfirst.local", 1, 0)));
    let mut buf = [0u8; 2];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)), "over the limit: closed");
    assert!(dns.metrics_text().contains("edge_dns_tcp_refused_total 1"));
    // The held ones, idle, are closed after about a second.
    let start = Instant::now();
    for s in &mut held {
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    // Then new connections are served again.
    support::eventually(Duration::from_secs(5), || {
        let mut s = TcpStream::connect(dns.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(&framed(&query(4, "mosh12.mayfirst.local", 1, 0))).ok()?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).ok()
    });
}

/// Versions alternate between "`flip` exists" (odd) and "`flip` is gone"
/// (even), and `alias` is a CNAME to it. Each answer carries either the A
/// record (an odd version) or NXDOMAIN with the SOA (an even version): were
/// the lookup and the SOA read from two snapshots, some NXDOMAIN would carry
/// an odd serial.
#[test]
fn one_answer_never_mixes_two_versions() {
    let dns = TestDns::start("");
    dns.apply(r#"{"ops":[{"op":"put","entity":{"kind":"dns_name","name":"alias","records":[{"type":"CNAME","value":"flip.mayfirst.local"}]}}]}"#);
    let put = r#"{"ops":[{"op":"put","entity":{"kind":"dns_name","name":"flip","records":[{"type":"A","value":"10.9.9.9"}]}}]}"#;
    let del = r#"{"ops":[{"op":"delete","kind":"dns_name","name":"flip"}]}"#;
    // Make the next version odd with `flip` present.
    let mut v = dns.apply(put);
    if v.is_multiple_of(2) {
        dns.apply(del);
        v = dns.apply(put);
    }
    assert_eq!(v % 2, 1);
    let writer = {
        let table = dns.table.clone();
        std::thread::spawn(move || {
            for i in 0..400 {
                let json = if i % 2 == 0 { del } else { put };
                let v = table.apply_blocking(support::txn(json), support::who()).unwrap().version;
                assert_eq!(v % 2, if i % 2 == 0 { 0 } else { 1 });
            }
        })
    };
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (mut positive, mut negative) = (0, 0);
    let mut buf = [0u8; 2048];
    let mut id = 0u16;
    while !writer.is_finished() || positive + negative < 200 {
        id = id.wrapping_add(1);
        s.send_to(&query(id, "alias.mayfirst.local", 1, 0), dns.addr).unwrap();
        let n = s.recv(&mut buf).unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        match m.metadata.response_code {
            ResponseCode::NoError => {
                assert!(m.answers.iter().any(|r| r.record_type() == RecordType::A), "{m:?}");
                positive += 1;
            }
            ResponseCode::NXDomain => {
                let RData::SOA(soa) = &m.authorities[0].data else { panic!("{m:?}") };
                assert_eq!(soa.serial % 2, 0, "NXDOMAIN from an even version, serial {}", soa.serial);
                negative += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    writer.join().unwrap();
    assert!(positive > 0 && negative > 0, "both states seen: {positive} / {negative}");
}

#[test]
fn every_listen_address_answers_udp_and_tcp() {
    let dns = TestDns::start("listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n");
    // UDP and TCP share each address's port.
    let addrs = dns.addrs.clone();
    assert_eq!(addrs.len(), 2);
    for addr in addrs {
        let s = UdpSocket::bind((addr.ip(), 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&query(21, "mosh12.mayfirst.local", 1, 0), addr).unwrap();
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(Message::from_vec(&buf[..n]).unwrap().answers.len(), 1, "{addr} over UDP");
        let mut t = TcpStream::connect(addr).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        t.write_all(&framed(&query(22, "mosh12.mayfirst.local", 1, 0))).unwrap();
        assert_eq!(read_framed(&mut t).answers.len(), 1, "{addr} over TCP");
    }
}
