//! Durable storage of the table and its history, behind the [`Store`]
//! trait so that an etcd store can stand beside the embedded one.
//!
//! The writer calls [`Store::commit`] before it publishes a version: a
//! version a client was told about is on disk.

use serde::{Deserialize, Serialize};

use crate::entity::Entity;
use crate::transaction::{Change, Transaction};

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// Who made a change: the control socket's peer credentials, or an origin
/// inside the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// `control`, `seed`, `rollback`, `import`, ...
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

impl Who {
    pub fn internal(origin: &str) -> Self {
        Self { origin: origin.into(), ..Self::default() }
    }
}

/// What the table was at its last committed version.
#[derive(Debug, Default)]
pub struct Loaded {
    pub version: u64,
    pub entities: Vec<Entity>,
}

/// One committed transaction, as written.
#[derive(Debug)]
pub struct Commit<'a> {
    pub version: u64,
    pub time_ms: u64,
    pub who: &'a Who,
    pub txn: &'a Transaction,
    pub changes: &'a [Change],
}

/// One line of history; `changes` is filled only when asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub time_ms: u64,
    pub who: Who,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Number of entities changed.
    pub changed: usize,
    pub txn: Transaction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Change>>,
}

/// A store failure. Nothing was committed when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    #[error("store {path}: version {found} on disk, expected {expected} (another writer?)")]
    VersionMismatch { path: String, expected: u64, found: u64 },
    #[error("store {path}: damaged record {what}: {reason}")]
    Corrupt { path: String, what: String, reason: String },
    #[error("store {path}: no version {version} in the history")]
    NoSuchVersion { path: String, version: u64 },
}

/// A durable home for the table. Implementations are driven by one writer
/// thread, so methods take `&mut self` and may block.
pub trait Store: Send + 'static {
    /// A line for `edgectl status`: kind and location.
    fn describe(&self) -> String;
    /// The current version and every entity.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Makes one transaction durable; its version is the stored one plus 1.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), StoreError>;
    /// Newest first, versions `<= before` (all if `None`), at most `limit`.
    fn history(&mut self, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError>;
    /// One history entry, with its changes.
    fn entry(&mut self, version: u64) -> Result<HistoryEntry, StoreError>;
    /// The changes of versions `from+1 ..= to`, oldest first.
    fn changes(&mut self, from: u64, to: u64) -> Result<Vec<Change>, StoreError>;
    /// The latest durable version (a follower polls it to see another
    /// process's commits).
    fn version(&mut self) -> Result<u64, StoreError>;
}
