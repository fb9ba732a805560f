//! A per-thread cache of encoded UDP answers, valid for one table version.
//!
//! Most queries are plain: one question, no other records but perhaps an
//! OPT without options. Their answer depends only on the question (case
//! aside), the EDNS size and DO bit, and the snapshot. The cache keys on
//! exactly that, lowercased, and keeps the encoded answer built by
//! [`answer`](crate::answer::answer()) for the snapshot's version. A hit
//! copies the bytes and patches in the query's ID, its RD and CD bits and
//! the question name as sent (same length, same offset, so compression
//! pointers into it stay valid and owner names keep the client's case as
//! on the slow path).
//!
//! The cache is dropped whole when the table version changes, so an answer
//! is always from the snapshot current when the query arrived. Anything
//! unusual (other opcodes, several records, OPT options, compression in the
//! question, trailing bytes) takes the slow path uncached.

use std::collections::HashMap;

use routing_table::Snapshot;

use crate::answer::{answer, Outcome, Peer, Summary, Transport, MAX_UDP_PAYLOAD};
use crate::config::Settings;

/// Entries per thread before the cache starts over (about 100 bytes each).
const MAX_ENTRIES: usize = 200_000;

struct Cached {
    bytes: Box<[u8]>,
    summary: Summary,
}

pub struct AnswerCache {
    version: u64,
    map: HashMap<Box<[u8]>, Cached, foldhash::fast::RandomState>,
    key: Vec<u8>,
}

impl Default for AnswerCache {
    fn default() -> Self {
        Self::new()
    }
}

impl AnswerCache {
    pub fn new() -> Self {
        AnswerCache { version: u64::MAX, map: HashMap::default(), key: Vec::with_capacity(300) }
    }

    /// Answers a UDP query into `out`; `None` when there is nothing to send.
    pub fn answer_udp(
        &mut self,
        settings: &Settings,
        snap: &Snapshot,
        packet: &[u8],
        peer: Peer,
        out: &mut Vec<u8>,
    ) -> Option<Summary> {
        debug_assert_eq!(peer.transport, Transport::Udp);
        if snap.version() != self.version {
            self.map.clear();
            self.version = snap.version();
        }
        let qname_end = plain_query_key(packet, &mut self.key);
        if let Some(end) = qname_end {
            if let Some(hit) = self.map.get(self.key.as_slice()) {
                out.clear();
                out.extend_from_slice(&hit.bytes);
                out[0] = packet[0];
                out[1] = packet[1];
                // RD and CD come from the query; the rest of the flags are ours.
                out[2] = (out[2] & !0x01) | (packet[2] & 0x01);
                out[3] = (out[3] & !0x10) | (packet[3] & 0x10);
                out[12..end].copy_from_slice(&packet[12..end]);
                return Some(hit.summary);
            }
        }
        let (outcome, summary) = answer(settings, snap, packet, peer);
        let Outcome::Reply(bytes) = outcome else { return None };
        if qname_end.is_some() {
            if self.map.len() >= MAX_ENTRIES {
                self.map.clear();
            }
            self.map.insert(self.key.as_slice().into(), Cached { bytes: bytes.as_slice().into(), summary });
        }
        out.clear();
        out.extend_from_slice(&bytes);
        Some(summary)
    }
}

/// For a plain query, writes the cache key into `key` and returns where the
/// question name ends; `None` for anything else.
fn plain_query_key(p: &[u8], key: &mut Vec<u8>) -> Option<usize> {
    key.clear();
    if p.len() < 17 {
        return None;
    }
    let counts = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    // QR clear, opcode QUERY; other header flag bits are ours to set.
    if p[2] & 0xf8 != 0 || counts(4) != 1 || counts(6) != 0 || counts(8) != 0 || counts(10) > 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*p.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 || i + 1 + len > p.len() || i - 12 + 1 + len > 254 {
            return None;
        }
        i += 1 + len;
    }
    let qname_end = i;
    let question = p.get(12..qname_end + 4)?;
    key.extend(question.iter().map(u8::to_ascii_lowercase));
    let rest = &p[qname_end + 4..];
    if counts(10) == 0 {
        if !rest.is_empty() {
            return None;
        }
        key.push(0);
        return Some(qname_end);
    }
    // One OPT: root owner, type 41, class = payload size, version 0, no
    // options, and nothing after it.
    if rest.len() != 11 || rest[0] != 0 || rest[1..3] != [0, 41] || rest[6] != 0 || rest[9..11] != [0, 0] {
        return None;
    }
    if rest[5] != 0 {
        return None; // extended RCODE bits in a query: let the slow path judge
    }
    let payload = u16::from_be_bytes([rest[3], rest[4]]).clamp(512, MAX_UDP_PAYLOAD);
    key.push(1);
    key.extend_from_slice(&payload.to_be_bytes());
    key.push(rest[7] & 0x80); // DO
    key.push(rest[7] & 0x7f); // other flag bits (should be zero)
    key.push(rest[8]);
    Some(qname_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, flags: [u8; 2], opt: Option<[u8; 11]>) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&flags);
        p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
        for l in name.split('.') {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        if let Some(o) = opt {
            p.extend_from_slice(&o);
        }
        p
    }

    fn table() -> Snapshot {
        let txn: routing_table::Transaction = serde_json::from_str(
            r#"{"ops":[{"op":"put","entity":{"kind":"backend","name":"mosh12","addresses":["10.0.0.12"]}},
            {"op":"put","entity":{"kind":"database","name":"db1","server":"mosh12"}}]}"#,
        )
        .unwrap();
        routing_table::transaction::apply(&Snapshot::empty(), &txn).unwrap().snapshot
    }

    /// Every cached answer is byte for byte what the slow path builds for
    /// the same query (other ID, case, RD, EDNS size and DO).
    #[test]
    fn hits_equal_the_slow_path() {
        let zone = crate::DnsConfig::default().validate().unwrap();
        let snap = table();
        let peer = Peer { ip: [127, 0, 0, 1].into(), transport: Transport::Udp };
        let mut cache = AnswerCache::new();
        let mut out = Vec::new();
        let opt = |size: u16, flags: u8| [0, 0, 41, (size >> 8) as u8, size as u8, 0, 0, flags, 0, 0, 0];
        let names =
            ["db1.mysql.mayfirst.local", "DB1.MySQL.mayfirst.LOCAL", "nx.mayfirst.local", "mysql.mayfirst.local"];
        for round in 0..2 {
            for (i, name) in names.iter().enumerate() {
                for flags in [[0x01, 0x00], [0x00, 0x10], [0x01, 0x10]] {
                    for o in [None, Some(opt(1232, 0)), Some(opt(4096, 0x80)), Some(opt(100, 0))] {
                        let q = query(1000 + i as u16 + round, name, flags, o);
                        let got = cache.answer_udp(&zone, &snap, &q, peer, &mut out).unwrap();
                        let Outcome::Reply(want) = answer(&zone, &snap, &q, peer).0 else { panic!() };
                        assert_eq!(out, want, "{name} {flags:?} {o:?}");
                        assert!(got.rcode == hickory_proto::op::ResponseCode::NoError || name.starts_with("nx"));
                    }
                }
            }
        }
        assert!(cache.map.len() >= 4, "plain queries are cached");
        // A new version empties it.
        let mut next = snap.clone();
        next = routing_table::transaction::apply(
            &next,
            &serde_json::from_str(
                r#"{"ops":[{"op":"put","entity":{"kind":"backend","name":"mosh12","addresses":["10.0.0.99"]}}]}"#,
            )
            .unwrap(),
        )
        .unwrap()
        .snapshot;
        let q = query(7, "db1.mysql.mayfirst.local", [1, 0], None);
        cache.answer_udp(&zone, &next, &q, peer, &mut out).unwrap();
        assert!(out.ends_with(&[10, 0, 0, 99]), "{out:?}");
    }

    #[test]
    fn unusual_queries_are_not_keyed() {
        let mut key = Vec::new();
        let plain = query(1, "a.b", [1, 0], None);
        assert!(plain_query_key(&plain, &mut key).is_some());
        let mut trailing = plain.clone();
        trailing.push(0);
        assert!(plain_query_key(&trailing, &mut key).is_none());
        let mut notify = plain.clone();
        notify[2] |= 4 << 3;
        assert!(plain_query_key(&notify, &mut key).is_none());
        let mut pointer = plain[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(plain_query_key(&pointer, &mut key).is_none());
        let opt_with_option = {
            let mut q = query(1, "a.b", [1, 0], Some([0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 4]));
            q.extend_from_slice(&[0, 10, 0, 0]);
            q
        };
        assert!(plain_query_key(&opt_with_option, &mut key).is_none());
    }
}
