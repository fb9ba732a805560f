//! Bodies of the fuzz targets, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by `tests/corpus.rs`, which replays the seed corpora
//! on stable Rust in CI. Each checks properties, not just "no panic".

use std::sync::OnceLock;

use routing_table::name::{self, HostBuf, HostPattern};
use routing_table::transaction::apply;
use routing_table::{Snapshot, Transaction};

fn demo() -> &'static Snapshot {
    static DEMO: OnceLock<Snapshot> = OnceLock::new();
    DEMO.get_or_init(|| {
        let seed = include_bytes!("../../config/example-routes.json");
        let txn: Transaction = serde_json::from_slice(seed).expect("demo routes parse");
        apply(&Snapshot::empty(), &txn).expect("demo routes apply").snapshot
    })
}

/// A control-API request body: decoded as the API decodes it, validated
/// against the demo table. A rejected transaction must leave the table as
/// it was; an accepted one must survive a JSON round trip and apply to the
/// same result again.
pub fn control_request(data: &[u8]) {
    let Ok(txn) = proxy::control::api::decode_json::<Transaction>(data) else {
        return;
    };
    let base = demo();
    let before = serde_json::to_string(&base.entities()).expect("serialise");
    match apply(base, &txn) {
        Err(_) => assert_eq!(serde_json::to_string(&base.entities()).expect("serialise"), before),
        Ok(applied) => {
            assert_eq!(applied.snapshot.version(), base.version() + 1);
            let text = serde_json::to_vec(&txn).expect("serialise txn");
            let again: Transaction = serde_json::from_slice(&text).expect("round trip");
            let second = apply(base, &again).expect("same transaction applies again");
            assert_eq!(second.changes, applied.changes);
            for e in applied.snapshot.entities() {
                let json = serde_json::to_string(&e).expect("serialise entity");
                let back: routing_table::Entity = serde_json::from_str(&json).expect("entity round trip");
                assert_eq!(back.normalized().expect("stays valid"), e);
            }
        }
    }
}

/// Name normalisation: idempotent, and the allocation-free lookup form
/// agrees with the stored form.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = name::host(text) {
        assert_eq!(name::host(&h).as_deref(), Ok(&*h));
        assert_eq!(HostBuf::new(&h).expect("ascii").as_str(), &*h);
        assert!(h.len() <= name::MAX_HOST_LEN && h.is_ascii());
    }
    if let Ok(p) = HostPattern::parse(text) {
        assert_eq!(HostPattern::parse(&p.to_name()), Ok(p));
    }
    for f in [name::ident, name::user, name::database] {
        if let Ok(n) = f(text) {
            assert_eq!(f(&n).as_deref(), Ok(&*n));
        }
    }
    if let Some(b) = HostBuf::new(text) {
        assert!(!b.as_str().bytes().any(|c| c.is_ascii_uppercase()));
        let _ = demo().site_for_host(text);
        let _ = demo().recipient(text);
    }
}
