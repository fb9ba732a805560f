//! Decision informed: can one snapshot-per-version table with sharded
//! copy-on-write maps serve every protocol's lookups and still publish an
//! update in well under a millisecond at 1,000,000 routes (issue #2, point 3)?
//!
//! Run: `cargo bench -p benches --bench table` (about 3 minutes; builds
//! tables of 10, 10k and 1M sites). Besides criterion's estimates it prints
//! p50/p99/max of single-change updates at 1M routes (memory store, so the
//! table's cost, not the disk's), of the same with the SQLite store (fsync
//! per commit) at 100k, and the start-up time from a 100k-route SQLite store.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::{memory_table, percentiles};
use criterion::{criterion_group, BenchmarkId, Criterion};
use routing_table::{fixtures, Op, SqliteStore, Table, TableMetrics, Transaction, Who};

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in [10usize, 10_000, 1_000_000] {
        let table = memory_table(n);
        let snap = table.snapshot();
        let hosts: Vec<String> = (0..1024).map(|i| fixtures::host(i * 7919 % n)).collect();
        let upper: Vec<String> = hosts.iter().map(|h| h.to_uppercase() + ".").collect();
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("host_exact", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(snap.site_for_host(black_box(&hosts[i])).is_some())
            })
        });
        g.bench_with_input(BenchmarkId::new("host_mixed_case_trailing_dot", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(snap.site_for_host(black_box(&upper[i])).is_some())
            })
        });
        g.bench_with_input(BenchmarkId::new("host_miss", n), &n, |b, _| {
            b.iter(|| black_box(snap.site_for_host(black_box("no.such.host.example.org")).is_none()))
        });
        g.bench_with_input(BenchmarkId::new("load_snapshot_and_lookup", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let snap = table.load();
                black_box(snap.site_for_host(black_box(&hosts[i])).map(|m| m.site.backends[0].port))
            })
        });
    }
    g.finish();
}

fn move_site(i: usize) -> Transaction {
    let op =
        Op::MoveSite { site: format!("site-{}", i * 7919 % 1_000_000), to: format!("mosh{}", i % 100), from: None };
    Transaction { ops: vec![op], ..Transaction::default() }
}

fn updates(c: &mut Criterion) {
    let table = memory_table(1_000_000);
    let mut g = c.benchmark_group("update");
    g.sample_size(50);
    let mut i = 1usize;
    g.bench_function("move_site_1M_memory_store", |b| {
        b.iter(|| {
            i += 1;
            table.apply_blocking(move_site(i), Who::internal("bench")).expect("apply")
        })
    });
    g.finish();
}

/// p99 of single-change updates at 1M routes: the target.
fn update_percentiles() {
    let table = memory_table(1_000_000);
    let samples: Vec<Duration> = (0..5_000)
        .map(|i| {
            let t = Instant::now();
            table.apply_blocking(move_site(i + 3), Who::internal("bench")).expect("apply");
            t.elapsed()
        })
        .collect();
    println!("{}", percentiles("update, 1M routes, memory store (validate + commit + swap)", &samples));
    let evacuate = Transaction {
        ops: vec![Op::EvacuateBackend { from: "mosh7".into(), to: "mosh8".into() }],
        ..Default::default()
    };
    let t = Instant::now();
    let done = table.apply_blocking(evacuate, Who::internal("bench")).expect("evacuate");
    println!("evacuate one backend of 1M routes: {} routes moved in {:?}", done.changes.len(), t.elapsed());
}

fn sqlite_table(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.db");
    let table =
        Table::open(Box::new(SqliteStore::open(&path).expect("store")), TableMetrics::unregistered().expect("m"))
            .expect("open");
    let ops = fixtures::sites(n, 100).into_iter().map(|entity| Op::Put { entity }).collect();
    table.apply_blocking(Transaction { ops, ..Default::default() }, Who::internal("bench")).expect("fill");
    (dir, path)
}

/// Start-up: open a SQLite store of 100k routes and build the snapshot;
/// then durable updates on it.
fn store_figures(c: &mut Criterion) {
    let (_dir, path) = sqlite_table(100_000);
    let mut g = c.benchmark_group("startup");
    g.sample_size(10);
    g.bench_function("open_sqlite_100k", |b| {
        b.iter(|| {
            let store = SqliteStore::open(&path).expect("store");
            let table = Table::open(Box::new(store), TableMetrics::unregistered().expect("m")).expect("open");
            assert_eq!(table.load().counts().sites, 100_000);
        })
    });
    g.finish();
    let table =
        Table::open(Box::new(SqliteStore::open(&path).expect("store")), TableMetrics::unregistered().expect("m"))
            .expect("open");
    let samples: Vec<Duration> = (0..300)
        .map(|i| {
            let op = Op::MoveSite {
                site: format!("site-{}", i * 7919 % 100_000),
                to: format!("mosh{}", i % 100),
                from: None,
            };
            let t = Instant::now();
            table
                .apply_blocking(Transaction { ops: vec![op], ..Default::default() }, Who::internal("bench"))
                .expect("apply");
            t.elapsed()
        })
        .collect();
    println!("{}", percentiles("update, 100k routes, SQLite store (fsync per commit)", &samples));
}

criterion_group!(benches, lookups, updates, store_figures);

fn main() {
    benches();
    if std::env::args().any(|a| a == "--bench") {
        update_percentiles();
    }
    Criterion::default().configure_from_args().final_summary();
}
