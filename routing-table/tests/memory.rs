//! Memory per site route (one host, one backend, default policies) must stay
//! at or under 300 bytes, counted as malloc's real chunk sizes
//! (`malloc_usable_size`), indexes included; and lookups allocate nothing.
#![allow(unsafe_code)] // a counting global allocator needs it

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use routing_table::fixtures::sites;
use routing_table::transaction::{apply, build};
use routing_table::Transaction;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE.fetch_add(unsafe { libc::malloc_usable_size(p.cast()) } as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        LIVE.fetch_sub(unsafe { libc::malloc_usable_size(p.cast()) } as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, layout) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn a_site_route_costs_at_most_300_bytes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 100_000;
    let base = LIVE.load(Ordering::Relaxed);
    let snapshot = build(1, sites(N, 100)).unwrap();
    let used = LIVE.load(Ordering::Relaxed) - base;
    let per_route = used as f64 / N as f64;
    println!("{N} site routes: {used} bytes live, {per_route:.1} bytes per route");
    assert_eq!(snapshot.counts().sites, N);
    assert!(per_route <= 300.0, "{per_route:.1} bytes per site route");
}

/// The per-request lookups of every protocol never allocate (the tests in
/// this file run one at a time: `ALLOCATIONS` is process-wide).
#[test]
fn lookups_do_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed: Transaction = serde_json::from_slice(include_bytes!("../../config/example-routes.json")).unwrap();
    let snap = apply(&build(0, sites(1000, 10)).unwrap(), &seed).unwrap().snapshot;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut found = 0;
    for _ in 0..100 {
        found += usize::from(snap.site_for_host("www.member-7.example.org").is_some());
        found += usize::from(snap.site_for_host("Deep.Sub.ALICE.test.").is_some());
        found += usize::from(snap.site_for_host("nowhere.example").is_none());
        found += usize::from(snap.mail_backend("Alice@Alice.test").is_some());
        found += usize::from(matches!(snap.recipient("bob+tag@alice.test"), routing_table::Recipient::Routed(_)));
        found += usize::from(snap.sftp_login("alice").is_some());
        found += usize::from(snap.database_server("alice_wp").is_some());
        found += usize::from(snap.backend("mosh3").is_some());
    }
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(found, 800);
    assert_eq!(allocated, 0, "lookups allocated {allocated} times");
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
