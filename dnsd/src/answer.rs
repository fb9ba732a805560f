//! One query in, one answer out: header checks, EDNS, the zone lookup with
//! CNAME chains, negative answers and truncation. No I/O here; the server
//! loops and the fuzz target call [`answer`].

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use routing_table::Snapshot;

use crate::config::Settings;
use crate::tsig::{self, Checked, Signed};
use crate::zone::ZoneParams;

/// The largest UDP answer we send, whatever the client offers (the DNS flag
/// day 2020 figure, which avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Hops followed along a CNAME chain inside the zone before stopping.
const MAX_CNAME_HOPS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with one received message.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a query we answer (a response, a runt): say nothing.
    Drop,
    /// An allowed zone transfer (TCP): stream the zone for this query,
    /// signing each message when the query was signed.
    Transfer(Message, Option<Signed>),
}

/// What one answer was, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub qtype: RecordType,
    pub rcode: ResponseCode,
    pub truncated: bool,
}

impl Summary {
    fn of(qtype: RecordType, rcode: ResponseCode) -> Self {
        Summary { qtype, rcode, truncated: false }
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
    pub transport: Transport,
}

/// Answers one message from `snap`.
pub fn answer(settings: &Settings, snap: &Snapshot, packet: &[u8], peer: Peer) -> (Outcome, Summary) {
    let unknown = Summary::of(RecordType::Unknown(0), ResponseCode::FormErr);
    // A runt or a response: never answer (answering responses invites loops).
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return (Outcome::Drop, unknown);
    }
    let query = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return (Outcome::Reply(header_only_error(packet, ResponseCode::FormErr)), unknown),
    };
    let qtype = query.queries.first().map_or(RecordType::Unknown(0), |q| q.query_type);
    let signed = match tsig::check(&settings.tsig_keys, packet, &query) {
        Checked::Unsigned => None,
        Checked::Signed(s) => Some(s),
        Checked::Refused(ctx) => {
            let bytes = Response::new(&query).error_bytes(ResponseCode::NotAuth, peer.transport);
            return (Outcome::Reply(tsig::sign_with(ctx, bytes)), Summary::of(qtype, ResponseCode::NotAuth));
        }
    };
    match respond(settings, snap, &query, qtype, peer, signed.as_ref()) {
        (Outcome::Reply(bytes), summary) => match signed {
            Some(s) => (Outcome::Reply(tsig::StreamSigner::new(s).sign(bytes)), summary),
            None => (Outcome::Reply(bytes), summary),
        },
        (Outcome::Transfer(q, _), summary) => (Outcome::Transfer(q, signed), summary),
        other => other,
    }
}

/// The answer to a parsed query whose TSIG (if any) is good; unsigned.
fn respond(
    settings: &Settings,
    snap: &Snapshot,
    query: &Message,
    qtype: RecordType,
    peer: Peer,
    signed: Option<&Signed>,
) -> (Outcome, Summary) {
    let zone = &settings.zone;
    let mut resp = Response::new(query);
    if query.metadata.op_code != OpCode::Query {
        return (resp.error(ResponseCode::NotImp, peer.transport), Summary::of(qtype, ResponseCode::NotImp));
    }
    if let Some(edns) = &query.edns {
        if edns.version() > 0 {
            return (resp.error(ResponseCode::BADVERS, peer.transport), Summary::of(qtype, ResponseCode::BADVERS));
        }
    }
    if query.queries.len() != 1 {
        return (resp.error(ResponseCode::FormErr, peer.transport), Summary::of(qtype, ResponseCode::FormErr));
    }
    let q = &query.queries[0];
    let refused =
        |resp: Response| (resp.error(ResponseCode::Refused, peer.transport), Summary::of(qtype, ResponseCode::Refused));
    if q.query_class != DNSClass::IN {
        return refused(resp);
    }
    let Some(rel) = zone.relative(&q.name) else { return refused(resp) };
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        let from_allowed = settings.allow_transfer.iter().any(|n| n.contains(peer.ip));
        let key_ok = match &settings.transfer_key {
            None => true,
            Some(key) => signed.is_some_and(|s| s.key_name() == key.signer_name()),
        };
        if peer.transport == Transport::Tcp && from_allowed && key_ok && rel.is_empty() {
            return (Outcome::Transfer(query.clone(), None), Summary::of(qtype, ResponseCode::NoError));
        }
        return refused(resp);
    }
    if matches!(qtype, RecordType::OPT | RecordType::TSIG) {
        return (resp.error(ResponseCode::FormErr, peer.transport), Summary::of(qtype, ResponseCode::FormErr));
    }
    resp.msg.metadata.authoritative = true;
    let rcode = resolve(zone, snap, q, rel, &mut resp.msg);
    resp.msg.metadata.response_code = rcode;
    let (bytes, truncated) = resp.finish(peer.transport);
    (Outcome::Reply(bytes), Summary { qtype, rcode, truncated })
}

/// Fills the answer and authority sections for one in-zone question;
/// returns the RCODE. Follows CNAMEs inside the zone (RFC 1034 §4.3.2); the
/// RCODE is that of the last name in the chain (RFC 6604).
fn resolve(zone: &ZoneParams, snap: &Snapshot, q: &Query, rel: String, msg: &mut Message) -> ResponseCode {
    let qtype = q.query_type;
    let mut owner = q.name.clone();
    let mut rel = rel;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let Some(records) = zone.node(snap, &rel, &owner) else {
            msg.authorities.push(zone.negative_soa(snap.version()));
            return ResponseCode::NXDomain;
        };
        let cname = records.iter().find(|r| r.record_type() == RecordType::CNAME);
        if let (Some(cname), false) = (cname, qtype == RecordType::CNAME) {
            msg.answers.push(cname.clone());
            let RData::CNAME(target) = &cname.data else { unreachable!("a CNAME record holds CNAME data") };
            let target = target.0.clone();
            seen.push(rel);
            match zone.relative(&target) {
                Some(next) if seen.len() < MAX_CNAME_HOPS && !seen.contains(&next) => {
                    owner = target;
                    rel = next;
                    continue;
                }
                // Out of the zone (the resolver follows it), a loop, or too long.
                _ => return ResponseCode::NoError,
            }
        }
        // ANY gets one RRset (RFC 8482): that of the first record stored.
        let want = if qtype == RecordType::ANY { records.first().map(|r| r.record_type()) } else { Some(qtype) };
        let before = msg.answers.len();
        msg.answers.extend(records.into_iter().filter(|r| Some(r.record_type()) == want));
        if msg.answers.len() == before {
            msg.authorities.push(zone.negative_soa(snap.version()));
        }
        return ResponseCode::NoError;
    }
}

/// A response under construction, mirroring the query's header and EDNS.
struct Response {
    msg: Message,
    /// Largest UDP answer the client takes.
    udp_limit: usize,
}

impl Response {
    fn new(query: &Message) -> Self {
        let m = &query.metadata;
        let mut msg = Message::response(m.id, m.op_code);
        msg.metadata.recursion_desired = m.recursion_desired;
        msg.metadata.checking_disabled = m.checking_disabled;
        msg.queries = query.queries.clone();
        let mut udp_limit = 512;
        if let Some(e) = &query.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            edns.set_version(0);
            edns.set_dnssec_ok(e.flags().dnssec_ok);
            msg.edns = Some(edns);
            udp_limit = usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        }
        Response { msg, udp_limit }
    }

    fn error(self, rcode: ResponseCode, transport: Transport) -> Outcome {
        Outcome::Reply(self.error_bytes(rcode, transport))
    }

    fn error_bytes(mut self, rcode: ResponseCode, transport: Transport) -> Vec<u8> {
        self.msg.metadata.response_code = rcode;
        self.msg.answers.clear();
        self.msg.authorities.clear();
        self.finish(transport).0
    }

    /// Encodes; over UDP, an answer larger than the client takes is replaced
    /// by its header and question with TC set, so the client retries on TCP.
    fn finish(mut self, transport: Transport) -> (Vec<u8>, bool) {
        let bytes = encode(&self.msg);
        if transport == Transport::Tcp || bytes.len() <= self.udp_limit {
            return (bytes, false);
        }
        self.msg.answers.clear();
        self.msg.authorities.clear();
        self.msg.additionals.clear();
        self.msg.metadata.truncation = true;
        (encode(&self.msg), true)
    }
}

pub(crate) fn encode(msg: &Message) -> Vec<u8> {
    // Encoding our own records cannot fail short of a bug; answer SERVFAIL
    // rather than panic in the serving loop.
    msg.to_vec().unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not encode an answer");
        let mut m = Message::error_msg(msg.metadata.id, msg.metadata.op_code, ResponseCode::ServFail);
        m.metadata.message_type = MessageType::Response;
        m.to_vec().unwrap_or_default()
    })
}

/// An error answer for a message we could not parse: its ID and opcode, no
/// question (RFC 1035 §4.1.1 lets FORMERR carry no sections).
fn header_only_error(packet: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[0] = packet[0];
    out[1] = packet[1];
    // QR, the query's opcode and RD; AA, TC, RA, Z, AD, CD clear.
    out[2] = 0x80 | (packet[2] & 0x79);
    out[3] = rcode.low();
    out
}
