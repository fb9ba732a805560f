//! AXFR (and IXFR, answered with the whole zone as RFC 1995 §4 allows) over
//! TCP: the zone from one snapshot, SOA first and last, split across as many
//! messages as it needs (RFC 5936 §2.2).

use std::io;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::Record;
use routing_table::Snapshot;
use tokio::io::AsyncWriteExt;

use crate::answer::encode;
use crate::server::write_framed;
use crate::tsig::{Signed, StreamSigner};
use crate::zone::ZoneParams;

/// Records per message before it is encoded; a message that still comes out
/// over 64 KiB (long TXT records) is split in two until it fits.
const RECORDS_PER_MESSAGE: usize = 256;
const MAX_MESSAGE: usize = 65_535;

/// Streams the zone to `out` as answers to `query`; each message must be
/// taken within `write_limit`.
pub async fn send<W: AsyncWriteExt + Unpin>(
    zone: &ZoneParams,
    snap: &Snapshot,
    query: &Message,
    signed: Option<Signed>,
    out: &mut W,
    write_limit: std::time::Duration,
) -> io::Result<()> {
    let mut signer = signed.map(StreamSigner::new);
    for msg in messages(zone, snap, query) {
        let msg = match &mut signer {
            Some(s) => s.sign(msg),
            None => msg,
        };
        write_framed(out, &msg, write_limit).await?;
    }
    out.flush().await
}

/// The encoded messages of one transfer. The first carries the question.
pub fn messages(zone: &ZoneParams, snap: &Snapshot, query: &Message) -> Vec<Vec<u8>> {
    let soa = zone.soa(snap.version());
    let mut records: Vec<Record> = zone.all_records(snap).collect();
    records.push(soa);
    let mut out = Vec::new();
    let mut first = true;
    for chunk in records.chunks(RECORDS_PER_MESSAGE) {
        emit(query, chunk, &mut first, &mut out);
    }
    out
}

fn emit(query: &Message, records: &[Record], first: &mut bool, out: &mut Vec<Vec<u8>>) {
    let mut msg = Message::response(query.metadata.id, query.metadata.op_code);
    msg.metadata.authoritative = true;
    msg.metadata.response_code = ResponseCode::NoError;
    if *first {
        msg.queries = query.queries.clone();
    }
    msg.answers = records.to_vec();
    let bytes = encode(&msg);
    if bytes.len() > MAX_MESSAGE && records.len() > 1 {
        let (a, b) = records.split_at(records.len() / 2);
        emit(query, a, first, out);
        emit(query, b, first, out);
        return;
    }
    *first = false;
    out.push(bytes);
}
