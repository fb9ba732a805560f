//! A store that keeps everything in memory: for tests and benchmarks that
//! must measure the table without the disk. Not durable, by design.

use std::collections::BTreeMap;

use super::{Commit, HistoryEntry, Loaded, Store, StoreError, Who};
use crate::entity::{Entity, EntityKey};
use crate::transaction::Change;

/// In-memory [`Store`]. Keeps history like the durable stores do.
#[derive(Default)]
pub struct MemoryStore {
    version: u64,
    entities: BTreeMap<EntityKey, Entity>,
    history: Vec<HistoryEntry>,
    /// Keep only this many history entries' changes (0: all).
    keep_changes: usize,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from existing entities at `version` (benchmarks).
    pub fn with_entities(version: u64, entities: Vec<Entity>) -> Self {
        let entities = entities.into_iter().map(|e| (e.key(), e)).collect();
        Self { version, entities, ..Self::default() }
    }

    /// Drops the changes of all but the last `n` entries (long benchmarks).
    pub fn keep_changes(mut self, n: usize) -> Self {
        self.keep_changes = n;
        self
    }
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory (not durable)".into()
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded { version: self.version, entities: self.entities.values().cloned().collect() })
    }

    fn commit(&mut self, c: &Commit<'_>) -> Result<u64, StoreError> {
        if c.version != self.version + 1 || c.base != self.version {
            return Err(StoreError::VersionMismatch {
                path: "memory".into(),
                expected: c.version - 1,
                found: self.version,
            });
        }
        for change in c.changes {
            match &change.after {
                Some(e) => self.entities.insert(change.key(), e.clone()),
                None => self.entities.remove(&change.key()),
            };
        }
        self.version = c.version;
        self.history.push(HistoryEntry {
            version: c.version,
            time_ms: c.time_ms,
            who: c.who.clone(),
            comment: c.txn.comment.clone(),
            changed: c.changes.len(),
            txn: c.txn.clone(),
            changes: Some(c.changes.to_vec()),
        });
        if self.keep_changes > 0 && self.history.len() > self.keep_changes {
            let old = self.history.len() - self.keep_changes - 1;
            self.history[old].changes = None;
        }
        Ok(c.version)
    }

    fn import(&mut self, table: &Loaded, who: &Who, comment: &str) -> Result<u64, StoreError> {
        if self.version != 0 {
            return Err(StoreError::NotEmpty { path: "memory".into(), version: self.version });
        }
        let (txn, changes) = super::import_commit_parts(table, comment);
        // Dense versions: pretend the versions before the copy were empty.
        self.version = table.version.max(1) - 1;
        let version = self.version + 1;
        let commit =
            Commit { base: self.version, version, time_ms: super::now_ms(), who, txn: &txn, changes: &changes };
        self.commit(&commit)
    }

    fn history(&mut self, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let before = before.unwrap_or(u64::MAX);
        let rows = self.history.iter().rev().filter(|h| h.version <= before).take(limit);
        Ok(rows.map(|h| HistoryEntry { changes: None, ..h.clone() }).collect())
    }

    fn entry(&mut self, version: u64) -> Result<HistoryEntry, StoreError> {
        self.history
            .iter()
            .find(|h| h.version == version)
            .cloned()
            .ok_or(StoreError::NoSuchVersion { path: "memory".into(), version })
    }

    fn changes(&mut self, from: u64, to: u64) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        for v in from + 1..=to {
            let entry = self.entry(v)?;
            let changes = entry.changes.ok_or(StoreError::NoSuchVersion { path: "memory".into(), version: v })?;
            out.extend(changes);
        }
        Ok(out)
    }

    fn version(&mut self) -> Result<u64, StoreError> {
        Ok(self.version)
    }
}
