//! The embedded default store: one SQLite database in the data directory.
//!
//! Tables: `meta` (schema and current version), `entities` (the current
//! table, one JSON row per entity) and `history` (one row per version, with
//! its operations and changes). WAL journal with `synchronous = FULL`, so a
//! commit is on disk when [`Store::commit`] returns. Admins may read it with
//! the `sqlite3` shell.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{to_json, Commit, HistoryEntry, Loaded, Store, StoreError, Who};
use crate::entity::Entity;
use crate::transaction::{Change, Transaction};

const SCHEMA_VERSION: i64 = 1;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Sqlite { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS entities (
                 kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
                 PRIMARY KEY (kind, name)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS history (
                 version INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL,
                 who TEXT NOT NULL, comment TEXT, changed INTEGER NOT NULL,
                 txn TEXT NOT NULL, changes TEXT NOT NULL);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0);",
        )
        .map_err(err)?;
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?1)", [SCHEMA_VERSION]).map_err(err)?;
        let store = Self { conn, path: path.to_path_buf() };
        let schema = store.meta("schema")?;
        if schema != SCHEMA_VERSION as u64 {
            return Err(store.corrupt("meta.schema", format!("schema {schema}, this build reads {SCHEMA_VERSION}")));
        }
        Ok(store)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.display().to_string(), source }
    }

    fn corrupt(&self, what: impl Into<String>, reason: impl ToString) -> StoreError {
        StoreError::Corrupt { path: self.path.display().to_string(), what: what.into(), reason: reason.to_string() }
    }

    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, what: impl Fn() -> String, text: &str) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| self.corrupt(what(), e))
    }

    fn row_to_entry(&self, row: HistoryRow, with_changes: bool) -> Result<HistoryEntry, StoreError> {
        let v = row.version;
        let who: Who = self.json(|| format!("history {v} who"), &row.who)?;
        let txn: Transaction = self.json(|| format!("history {v} txn"), &row.txn)?;
        let changes = match with_changes {
            true => Some(self.json(|| format!("history {v} changes"), &row.changes)?),
            false => None,
        };
        Ok(HistoryEntry {
            version: v,
            time_ms: row.time_ms,
            who,
            comment: row.comment,
            changed: row.changed,
            txn,
            changes,
        })
    }
    /// Writes one commit in one SQLite transaction, if the stored version is
    /// still `c.base` (an import: 0, and its version may be anything above).
    fn write(&mut self, c: &Commit<'_>, import: bool) -> Result<u64, StoreError> {
        let path = self.path.display().to_string();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let found: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| r.get(0)).map_err(err)?;
        let expected = if import { 0 } else { c.version - 1 };
        if found as u64 != expected || c.base != expected {
            return Err(StoreError::VersionMismatch { path, expected, found: found as u64 });
        }
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO entities (kind, name, body) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            let mut del = tx.prepare_cached("DELETE FROM entities WHERE kind = ?1 AND name = ?2").map_err(err)?;
            for change in c.changes {
                let kind = change.kind.as_str();
                match &change.after {
                    Some(e) => put.execute(params![kind, &*change.name, to_json(e)]).map_err(err)?,
                    None => del.execute(params![kind, &*change.name]).map_err(err)?,
                };
            }
        }
        tx.execute(
            "INSERT INTO history (version, time_ms, who, comment, changed, txn, changes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                c.version as i64,
                c.time_ms as i64,
                to_json(c.who),
                c.txn.comment,
                c.changes.len() as i64,
                to_json(c.txn),
                to_json(&c.changes),
            ],
        )
        .map_err(err)?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'version'", [c.version as i64]).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(c.version)
    }
}

struct HistoryRow {
    version: u64,
    time_ms: u64,
    who: String,
    comment: Option<String>,
    changed: usize,
    txn: String,
    changes: String,
}

impl HistoryRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            version: r.get::<_, i64>(0)? as u64,
            time_ms: r.get::<_, i64>(1)? as u64,
            who: r.get(2)?,
            comment: r.get(3)?,
            changed: r.get::<_, i64>(4)? as usize,
            txn: r.get(5)?,
            changes: r.get(6)?,
        })
    }
}

const HISTORY_COLUMNS: &str = "version, time_ms, who, comment, changed, txn, changes";

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let version = self.meta("version")?;
        let mut stmt = self.conn.prepare("SELECT kind, name, body FROM entities").map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(|e| self.err(e))?;
        let mut entities = Vec::new();
        for row in rows {
            let (kind, name, body) = row.map_err(|e| self.err(e))?;
            let entity: Entity = self.json(|| format!("entity {kind} {name}"), &body)?;
            if entity.kind().as_str() != kind || **entity.name() != *name {
                return Err(self.corrupt(format!("entity {kind} {name}"), "row key differs from its body"));
            }
            entities.push(entity);
        }
        Ok(Loaded { version, entities })
    }

    fn commit(&mut self, c: &Commit<'_>) -> Result<u64, StoreError> {
        self.write(c, false)
    }

    fn import(&mut self, table: &Loaded, who: &Who, comment: &str) -> Result<u64, StoreError> {
        let found = self.meta("version")?;
        if found != 0 {
            return Err(StoreError::NotEmpty { path: self.path.display().to_string(), version: found });
        }
        let (txn, changes) = super::import_commit_parts(table, comment);
        let version = table.version.max(1);
        let commit = Commit { base: 0, version, time_ms: super::now_ms(), who, txn: &txn, changes: &changes };
        self.write(&commit, true)
    }

    fn history(&mut self, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let sql = format!("SELECT {HISTORY_COLUMNS} FROM history WHERE version <= ?1 ORDER BY version DESC LIMIT ?2");
        let before = before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64;
        let rows: Vec<HistoryRow> = {
            let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
            let rows = stmt.query_map(params![before, limit as i64], HistoryRow::read).map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        rows.into_iter().map(|r| self.row_to_entry(r, false)).collect()
    }

    fn entry(&mut self, version: u64) -> Result<HistoryEntry, StoreError> {
        let sql = format!("SELECT {HISTORY_COLUMNS} FROM history WHERE version = ?1");
        let row = self
            .conn
            .query_row(&sql, [version as i64], HistoryRow::read)
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| StoreError::NoSuchVersion { path: self.path.display().to_string(), version })?;
        self.row_to_entry(row, true)
    }

    fn changes(&mut self, from: u64, to: u64) -> Result<Vec<Change>, StoreError> {
        let texts: Vec<(i64, String)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT version, changes FROM history WHERE version > ?1 AND version <= ?2 ORDER BY version",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![from as i64, to as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        if texts.len() as u64 != to.saturating_sub(from) {
            return Err(StoreError::NoSuchVersion { path: self.path.display().to_string(), version: from + 1 });
        }
        let mut out = Vec::new();
        for (v, text) in texts {
            let batch: Vec<Change> = self.json(|| format!("history {v} changes"), &text)?;
            out.extend(batch);
        }
        Ok(out)
    }

    fn version(&mut self) -> Result<u64, StoreError> {
        self.meta("version")
    }
}
