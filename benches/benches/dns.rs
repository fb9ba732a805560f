//! Decision informed: is building each DNS answer from the snapshot fast
//! enough, or does dnsd need the per-version answer cache (issue #4,
//! "Performance")? Measures, on a table with 10,000 databases like the peer
//! benchmark's zone, the CPU cost of one answer: the full path (parse, zone
//! lookup, encode) for a hit, a miss (NXDOMAIN) and a CNAME chain, and the
//! cached path. Sockets are left out; `scripts/bench-dnsd.sh` with
//! `../shared/bench/dns-peers.sh` measures end to end.
//!
//! Run: `cargo bench -p benches --bench dns` (under a minute).

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use dnsd::answer::{answer, Peer, Transport};
use dnsd::cache::AnswerCache;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use routing_table::{Snapshot, Transaction};

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(format!("{name}.")).expect("a name"), RecordType::A));
    m.to_vec().expect("encodes")
}

fn zone_table(n: usize) -> Snapshot {
    let mut ops = vec![serde_json::json!({"op": "put", "entity": {"kind": "dns_name", "name": "www",
        "records": [{"type": "CNAME", "value": "db1.mysql.mayfirst.local"}]}})];
    for i in 1..=n {
        let b = format!("db-{i}");
        ops.push(serde_json::json!({"op": "put", "entity": {"kind": "backend", "name": b,
            "addresses": [format!("10.{}.{}.{}", 1 + i / 65536, i / 256 % 256, i % 256)]}}));
        ops.push(
            serde_json::json!({"op": "put", "entity": {"kind": "database", "name": format!("db{i}"), "server": b}}),
        );
    }
    let txn: Transaction = serde_json::from_value(serde_json::json!({ "ops": ops })).expect("transaction");
    routing_table::transaction::apply(&Snapshot::empty(), &txn).expect("applies").snapshot
}

fn answers(c: &mut Criterion) {
    let zone = dnsd::DnsConfig::default().validate().expect("defaults");
    let snap = zone_table(10_000);
    let peer = Peer { ip: [127, 0, 0, 1].into(), transport: Transport::Udp };
    let hits: Vec<Vec<u8>> =
        (0..1024).map(|i| query(&format!("db{}.mysql.mayfirst.local", 1 + i * 7 % 10_000))).collect();
    let misses: Vec<Vec<u8>> = (0..1024).map(|i| query(&format!("db{}.mysql.mayfirst.local", 10_001 + i))).collect();
    let cname = query("www.mayfirst.local");
    let mut g = c.benchmark_group("dns_answer");
    let mut i = 0usize;
    g.bench_function("full_path_hit", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(answer(&zone, &snap, black_box(&hits[i]), peer))
        })
    });
    g.bench_function("full_path_nxdomain", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(answer(&zone, &snap, black_box(&misses[i]), peer))
        })
    });
    g.bench_function("full_path_cname_chain", |b| b.iter(|| black_box(answer(&zone, &snap, black_box(&cname), peer))));
    let mut cache = AnswerCache::new();
    let mut out = Vec::new();
    g.bench_function("cached_hit", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(cache.answer_udp(&zone, &snap, black_box(&hits[i]), peer, &mut out))
        })
    });
    g.finish();
}

criterion_group!(benches, answers);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
