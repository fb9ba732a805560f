//! Tables of several nodes on one shared store, without etcd: an in-memory
//! store behind a mutex that says it is shared (it watches) and can be made
//! unreachable. The etcd store itself is tested against a real cluster in
//! `proxy/tests/multi_node.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use routing_table::store::{Commit, HistoryEntry, Wake};
use routing_table::transaction::Op;
use routing_table::{
    ApplyError, Change, Entity, Loaded, MemoryStore, Store, StoreError, Table, TableMetrics, Transaction, TxnError, Who,
};

#[derive(Clone, Default)]
struct Shared {
    store: Arc<Mutex<MemoryStore>>,
    down: Arc<AtomicBool>,
    wakes: Arc<Mutex<Vec<Wake>>>,
}

impl Shared {
    fn wake_all(&self) {
        for wake in self.wakes.lock().unwrap().iter() {
            wake();
        }
    }
}

/// One node's handle on the shared store.
struct Node(Shared);

impl Node {
    fn reach(&self) -> Result<std::sync::MutexGuard<'_, MemoryStore>, StoreError> {
        if self.0.down.load(Ordering::SeqCst) {
            return Err(StoreError::Remote { path: "shared".into(), reason: "unreachable".into() });
        }
        Ok(self.0.store.lock().unwrap())
    }
}

impl Store for Node {
    fn describe(&self) -> String {
        "shared memory".into()
    }
    fn load(&mut self) -> Result<Loaded, StoreError> {
        self.reach()?.load()
    }
    fn commit(&mut self, commit: &Commit<'_>) -> Result<u64, StoreError> {
        let version = self.reach()?.commit(commit)?;
        self.0.wake_all();
        Ok(version)
    }
    fn history(&mut self, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        self.reach()?.history(before, limit)
    }
    fn entry(&mut self, version: u64) -> Result<HistoryEntry, StoreError> {
        self.reach()?.entry(version)
    }
    fn changes(&mut self, from: u64, to: u64) -> Result<Vec<Change>, StoreError> {
        self.reach()?.changes(from, to)
    }
    fn version(&mut self) -> Result<u64, StoreError> {
        self.reach()?.version()
    }
    fn import(&mut self, table: &Loaded, who: &Who, comment: &str) -> Result<u64, StoreError> {
        self.reach()?.import(table, who, comment)
    }
    fn watch(&mut self, wake: Wake) -> Result<bool, StoreError> {
        self.0.wakes.lock().unwrap().push(wake);
        Ok(true)
    }
}

fn open(shared: &Shared) -> Table {
    Table::open(Box::new(Node(shared.clone())), TableMetrics::unregistered().unwrap()).unwrap()
}

fn backend(name: &str, addr: &str) -> Transaction {
    let entity: Entity =
        serde_json::from_value(serde_json::json!({"kind": "backend", "name": name, "addresses": [addr]})).unwrap();
    Transaction { if_version: None, comment: None, ops: vec![Op::Put { entity }] }
}

fn wait_version(table: &Table, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while table.load().version() < version {
        assert!(Instant::now() < deadline, "version {version} not followed in 5 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_commit_through_one_node_is_followed_by_the_other() {
    let shared = Shared::default();
    let (a, b) = (open(&shared), open(&shared));
    let done = a.apply_blocking(backend("x", "10.0.0.1"), Who::internal("test")).unwrap();
    wait_version(&b, done.version);
    assert!(b.load().backend("x").is_some());
}

#[test]
fn a_lost_race_is_validated_again_on_the_new_table() {
    let shared = Shared::default();
    let (a, b) = (open(&shared), open(&shared));
    // B does not know about A's commit yet when it writes: nobody woke it.
    shared.wakes.lock().unwrap().clear();
    let first = a.apply_blocking(backend("x", "10.0.0.1"), Who::internal("a")).unwrap();
    assert_eq!(b.load().version(), 0);
    // A stale if_version: 409, nothing written.
    let stale = Transaction { if_version: Some(0), ..backend("y", "10.0.0.2") };
    match b.apply_blocking(stale, Who::internal("b")) {
        Err(ApplyError::Rejected(TxnError::VersionConflict { .. })) => {}
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(b.load().version(), first.version, "B caught up while checking");
    assert!(b.load().backend("y").is_none());
    // Without if_version: applied on top of A's version.
    let second = b.apply_blocking(backend("y", "10.0.0.2"), Who::internal("b")).unwrap();
    assert_eq!(second.version, first.version + 1);
    assert!(b.load().backend("x").is_some() && b.load().backend("y").is_some());
}

#[test]
fn an_unreachable_store_makes_the_node_stale_and_refuse_writes_until_it_is_back() {
    let shared = Shared::default();
    let a = open(&shared);
    let v = a.apply_blocking(backend("x", "10.0.0.1"), Who::internal("a")).unwrap().version;
    shared.down.store(true, Ordering::SeqCst);
    match a.apply_blocking(backend("x", "10.0.0.9"), Who::internal("a")) {
        Err(e @ ApplyError::Unavailable(..)) => assert!(e.to_string().contains(&format!("version {v}")), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(a.stale().is_some_and(|s| s.error.contains("unreachable")));
    assert_eq!(a.load().version(), v, "still serving the last version");
    shared.down.store(false, Ordering::SeqCst);
    let next = a.apply_blocking(backend("x", "10.0.0.9"), Who::internal("a")).unwrap();
    assert_eq!(next.version, v + 1);
    assert!(a.stale().is_none(), "reachable again");
}

#[test]
fn a_store_whose_version_went_back_is_not_followed() {
    let shared = Shared::default();
    let a = open(&shared);
    a.apply_blocking(backend("x", "10.0.0.1"), Who::internal("a")).unwrap();
    *shared.store.lock().unwrap() = MemoryStore::new(); // emptied under the node
    shared.wake_all();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stale().is_none() {
        assert!(Instant::now() < deadline, "not marked stale");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(a.stale().unwrap().error.contains("went back from 1 to 0"), "{:?}", a.stale());
    assert!(a.load().backend("x").is_some(), "the last table is still served");
    assert!(matches!(a.apply_blocking(backend("y", "10.0.0.2"), Who::internal("a")), Err(ApplyError::Unavailable(..))));
}
