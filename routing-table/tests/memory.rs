//! Memory per site route (one host, one backend, default policies) must stay
//! at or under 300 bytes, counted as malloc's real chunk sizes
//! (`malloc_usable_size`), indexes included.
#![allow(unsafe_code)] // a counting global allocator needs it

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use routing_table::fixtures::sites;
use routing_table::transaction::build;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
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
    const N: usize = 100_000;
    let base = LIVE.load(Ordering::Relaxed);
    let snapshot = build(1, sites(N, 100)).unwrap();
    let used = LIVE.load(Ordering::Relaxed) - base;
    let per_route = used as f64 / N as f64;
    println!("{N} site routes: {used} bytes live, {per_route:.1} bytes per route");
    assert_eq!(snapshot.counts().sites, N);
    assert!(per_route <= 300.0, "{per_route:.1} bytes per site route");
}
