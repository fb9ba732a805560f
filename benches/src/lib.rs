//! Helpers shared by the criterion benches in `benches/benches/`: building
//! tables of a given size and reporting latency percentiles.

use std::time::Duration;

use hdrhistogram::Histogram;
use routing_table::{fixtures, MemoryStore, Table, TableMetrics};

/// A live table of `n` synthetic sites over 100 backends, on a memory store
/// (so the figures are the table's, not the disk's).
pub fn memory_table(n: usize) -> Table {
    let store = MemoryStore::with_entities(1, fixtures::sites(n, 100)).keep_changes(64);
    Table::open(Box::new(store), TableMetrics::unregistered().expect("metrics")).expect("open table")
}

/// Percentiles of `samples`, as one line.
pub fn percentiles(label: &str, samples: &[Duration]) -> String {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for s in samples {
        h.record(s.as_nanos() as u64).expect("record");
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{label}: n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs",
        h.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    )
}
