//! Durable storage of the table and its history, behind the [`Store`]
//! trait so that an etcd store can stand beside the embedded one.
//!
//! The writer calls [`Store::commit`] before it publishes a version: a
//! version a client was told about is on disk.
//!
//! Two kinds of store: one this process alone writes ([`SqliteStore`],
//! [`MemoryStore`]), whose versions are dense (each commit is the last plus
//! one), and a shared one that several edge nodes write ([`EtcdStore`],
//! feature `etcd`), whose versions come from etcd's revision: increasing, with
//! gaps. A shared store reports another writer's commit as
//! [`StoreError::VersionMismatch`] and says when it may have moved on through
//! [`Store::watch`].

use serde::{Deserialize, Serialize};

use crate::entity::Entity;
use crate::transaction::{Change, Transaction};

#[cfg(feature = "etcd")]
mod etcd;
mod memory;
mod sqlite;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdStore};
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// Called by a shared store whenever its stored version may have moved on.
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

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
    /// The version it applies to: the store's latest when it was validated.
    pub base: u64,
    /// The version it becomes in a store with dense versions (`base + 1`);
    /// a shared store assigns its own, returned by [`Store::commit`].
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
    /// A remote store (etcd) could not be reached or refused the request.
    #[error("store {path}: {reason}")]
    Remote { path: String, reason: String },
    #[error("store {path} is not empty (version {version}); a copy goes only into an empty store")]
    NotEmpty { path: String, version: u64 },
}

/// A durable home for the table. Implementations are driven by one writer
/// thread, so methods take `&mut self` and may block.
pub trait Store: Send + 'static {
    /// A line for `edgectl status`: kind and location.
    fn describe(&self) -> String;
    /// The current version and every entity.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Makes one transaction durable if the store is still at
    /// `commit.base`, and returns its version: `commit.version` in a store
    /// with dense versions, the one it assigned in a shared store. Another
    /// writer's commit since `base` is [`StoreError::VersionMismatch`], and
    /// nothing is written.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<u64, StoreError>;
    /// Newest first, versions `<= before` (all if `None`), at most `limit`.
    fn history(&mut self, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError>;
    /// One history entry, with its changes.
    fn entry(&mut self, version: u64) -> Result<HistoryEntry, StoreError>;
    /// The changes of versions `from+1 ..= to`, oldest first.
    fn changes(&mut self, from: u64, to: u64) -> Result<Vec<Change>, StoreError>;
    /// The latest durable version (a follower polls it to see another
    /// process's commits).
    fn version(&mut self) -> Result<u64, StoreError>;
    /// Fills an empty store with `table` (a copy of another store), as one
    /// version no lower than `table.version`, and returns that version.
    /// [`StoreError::NotEmpty`] if the store has any version.
    fn import(&mut self, table: &Loaded, who: &Who, comment: &str) -> Result<u64, StoreError>;
    /// A store other processes write too starts calling `wake` whenever its
    /// version may have moved on (and when it loses or regains the remote
    /// end), and returns true. A store only this process writes returns
    /// false: the default.
    fn watch(&mut self, wake: Wake) -> Result<bool, StoreError> {
        let _ = wake;
        Ok(false)
    }
}

/// The one transaction an import is recorded as: a comment, no operations
/// (the changes hold every entity).
pub(crate) fn import_commit_parts(table: &Loaded, comment: &str) -> (Transaction, Vec<Change>) {
    let txn = Transaction { if_version: None, comment: Some(comment.to_string()), ops: Vec::new() };
    let changes = table
        .entities
        .iter()
        .map(|e| Change { kind: e.kind(), name: e.name().clone(), before: None, after: Some(e.clone()) })
        .collect();
    (txn, changes)
}

/// Wall-clock time in ms since the Unix epoch, as history and session
/// records keep it (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// JSON of our own types, which always serialise (no maps with non-string keys).
pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("\"unserialisable: {e}\""))
}
