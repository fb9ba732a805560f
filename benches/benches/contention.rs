//! Decision informed: does one `ArcSwap` snapshot hold up when every
//! listener thread loads it per request while the writer publishes (issue
//! #7: "snapshot load under contention")? Readers run `Table::load()` plus a
//! host lookup on a 100,000-site table, on 1, 2 and 4 threads, with the
//! writer idle and with it publishing a site move every millisecond.
//! Reported: time per load + lookup, per reader thread.
//!
//! Run: `cargo bench -p benches --bench contention` (about a minute). On a
//! 2-core machine, 4 reader threads are oversubscribed on purpose.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::memory_table;
use criterion::{criterion_group, BenchmarkId, Criterion};
use routing_table::{fixtures, Op, Transaction, Who};

fn load_under_writes(c: &mut Criterion) {
    let table = memory_table(100_000);
    let hosts: Arc<Vec<String>> = Arc::new((0..1024).map(|i| fixtures::host(i * 97 % 100_000)).collect());
    let mut g = c.benchmark_group("load_and_lookup");
    for writing in [false, true] {
        for threads in [1usize, 2, 4] {
            let id = BenchmarkId::new(if writing { "writer_publishing" } else { "writer_idle" }, threads);
            g.bench_with_input(id, &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    let stop = Arc::new(AtomicBool::new(false));
                    let writer = writing.then(|| {
                        let (table, stop) = (table.clone(), stop.clone());
                        std::thread::spawn(move || {
                            let mut i = 0usize;
                            while !stop.load(Ordering::Relaxed) {
                                let op = Op::MoveSite {
                                    site: format!("site-{}", i * 7919 % 100_000),
                                    to: format!("mosh{}", i % 100),
                                    from: None,
                                };
                                let txn = Transaction { ops: vec![op], ..Transaction::default() };
                                let _ = table.apply_blocking(txn, Who::internal("bench"));
                                i += 1;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        })
                    });
                    let per_thread = iters / threads as u64 + 1;
                    let readers: Vec<_> = (0..threads)
                        .map(|t| {
                            let (table, hosts) = (table.clone(), hosts.clone());
                            std::thread::spawn(move || {
                                let start = Instant::now();
                                for i in 0..per_thread as usize {
                                    let snap = table.load();
                                    black_box(snap.site_for_host(&hosts[(i + t * 7) & 1023]).is_some());
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    let elapsed: Duration =
                        readers.into_iter().map(|r| r.join().unwrap_or_default()).max().unwrap_or_default();
                    stop.store(true, Ordering::Relaxed);
                    if let Some(w) = writer {
                        let _ = w.join();
                    }
                    // Time per operation as one reader thread sees it.
                    elapsed.mul_f64(iters as f64 / per_thread as f64)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, load_under_writes);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
