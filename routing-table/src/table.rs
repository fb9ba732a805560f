//! The live table: the current [`Snapshot`] in one `ArcSwap`, one writer
//! thread that owns the [`Store`], and a `watch` channel of versions.
//!
//! Readers call [`Table::load`] once per request or connection and use that
//! snapshot to the end. Writers send transactions to the writer thread,
//! which validates, commits to the store, then swaps — in that order, so a
//! version is durable before anyone can see it.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot, watch};

use crate::metrics::TableMetrics;
use crate::snapshot::Snapshot;
use crate::store::{Commit, HistoryEntry, Store, StoreError, Who};
use crate::transaction::{self, compose, undo_ops, Change, Transaction, TxnError};

/// Why an update was not applied. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    Rejected(#[from] TxnError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no version {0} to go back to")]
    NoSuchVersion(u64),
    #[error("the table at version {0} is the same as now: nothing to roll back")]
    Unchanged(u64),
    #[error("the table writer has stopped")]
    Closed,
    #[error("this table is a read-only follower of a store another process writes; change it through that process")]
    ReadOnly,
}

/// Why the table could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored table at version {version} is invalid: {source}")]
    Invalid { version: u64, source: TxnError },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the table writer thread: {0}")]
    Thread(std::io::Error),
}

/// A committed transaction. `changes` is empty, and `version` the current
/// one, when the transaction changed nothing. Cloning it is cheap: the
/// changes are shared with every subscriber.
#[derive(Debug, Clone, Serialize)]
pub struct Committed {
    pub version: u64,
    pub changes: Arc<[Change]>,
}

/// How many published change sets a slow subscriber may fall behind before
/// it gets `RecvError::Lagged` (and must resynchronise from a snapshot).
pub const CHANGES_BACKLOG: usize = 1024;

/// What a transaction would do, without doing it.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The version it would create.
    pub version: u64,
    pub changes: Vec<Change>,
}

type Reply<T> = oneshot::Sender<Result<T, ApplyError>>;

enum Command {
    Apply { txn: Transaction, who: Who, reply: Reply<Committed> },
    Rollback { to: u64, if_version: Option<u64>, who: Who, reply: Reply<Committed> },
    History { before: Option<u64>, limit: usize, reply: Reply<Vec<HistoryEntry>> },
    Entry { version: u64, reply: Reply<HistoryEntry> },
    Diff { from: u64, to: u64, reply: Reply<Vec<Change>> },
}

struct Shared {
    current: ArcSwap<Snapshot>,
    versions: watch::Sender<u64>,
    changes: broadcast::Sender<Committed>,
    metrics: TableMetrics,
}

/// Handle to the live routing table. Cheap to clone; the writer thread
/// stops when the last handle is dropped.
#[derive(Clone)]
pub struct Table {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    store: Arc<str>,
    opened: Instant,
}

impl Table {
    /// Loads the table from `store` and starts the writer thread.
    pub fn open(store: Box<dyn Store>, metrics: TableMetrics) -> Result<Table, OpenError> {
        Self::start(store, metrics, None)
    }

    /// A read-only table that follows a store another process writes (the
    /// standalone dnsd beside `edge`): every `poll` it reads the store's
    /// version and applies the stored changes since its own, publishing
    /// them like the writer does. Writes are refused with
    /// [`ApplyError::ReadOnly`]; history and diff work.
    pub fn follow(store: Box<dyn Store>, metrics: TableMetrics, poll: std::time::Duration) -> Result<Table, OpenError> {
        Self::start(store, metrics, Some(poll))
    }

    fn start(
        mut store: Box<dyn Store>,
        metrics: TableMetrics,
        follow: Option<std::time::Duration>,
    ) -> Result<Table, OpenError> {
        let loaded = store.load()?;
        let version = loaded.version;
        let snapshot =
            transaction::build(version, loaded.entities).map_err(|source| OpenError::Invalid { version, source })?;
        metrics.published(&snapshot, None);
        let (versions, _) = watch::channel(version);
        let (changes, _) = broadcast::channel(CHANGES_BACKLOG);
        let shared = Arc::new(Shared { current: ArcSwap::from_pointee(snapshot), versions, changes, metrics });
        let (commands, rx) = mpsc::channel();
        let describe: Arc<str> = store.describe().into();
        let writer = Writer { shared: shared.clone(), store, follow };
        thread::Builder::new().name("table-writer".into()).spawn(move || writer.run(rx)).map_err(|e| {
            StoreError::Corrupt { path: describe.to_string(), what: "writer thread".into(), reason: e.to_string() }
        })?;
        Ok(Table { shared, commands, store: describe, opened: Instant::now() })
    }

    /// The current snapshot, for one request. Cheap; never blocks.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.shared.current.load()
    }

    /// The current snapshot as an owned `Arc` (for long-lived holders).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// Receives the latest published version (intermediate ones may be
    /// skipped): for subscribers that only need "something changed".
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.versions.subscribe()
    }

    /// Receives every published version with its changes, in order, for
    /// subscribers that act on what changed (session kicks, cache purges,
    /// NOTIFY). Each change set is sent after its snapshot is live.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Committed> {
        self.shared.changes.subscribe()
    }

    pub fn store_description(&self) -> &str {
        &self.store
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    /// What `txn` would change, checked against the current snapshot.
    pub fn dry_run(&self, txn: &Transaction) -> Result<DryRun, TxnError> {
        let base = self.load();
        let applied = transaction::apply(&base, txn)?;
        let version = if applied.changes.is_empty() { base.version() } else { applied.snapshot.version() };
        Ok(DryRun { version, changes: applied.changes })
    }

    /// Validates, commits and publishes `txn`.
    pub async fn apply(&self, txn: Transaction, who: Who) -> Result<Committed, ApplyError> {
        self.call(|reply| Command::Apply { txn, who, reply }).await
    }

    /// Like [`Table::apply`], for threads outside an async runtime.
    pub fn apply_blocking(&self, txn: Transaction, who: Who) -> Result<Committed, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Apply { txn, who, reply }).map_err(|_| ApplyError::Closed)?;
        rx.blocking_recv().map_err(|_| ApplyError::Closed)?
    }

    /// Makes the table what it was at version `to`, as a new version.
    pub async fn rollback(&self, to: u64, if_version: Option<u64>, who: Who) -> Result<Committed, ApplyError> {
        self.call(|reply| Command::Rollback { to, if_version, who, reply }).await
    }

    /// History, newest first.
    pub async fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, ApplyError> {
        self.call(|reply| Command::History { before, limit, reply }).await
    }

    /// One version's history entry with its changes.
    pub async fn history_entry(&self, version: u64) -> Result<HistoryEntry, ApplyError> {
        self.call(|reply| Command::Entry { version, reply }).await
    }

    /// The net change from version `from` to version `to` (either order).
    pub async fn diff(&self, from: u64, to: u64) -> Result<Vec<Change>, ApplyError> {
        self.call(|reply| Command::Diff { from, to, reply }).await
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(make(reply)).map_err(|_| ApplyError::Closed)?;
        rx.await.map_err(|_| ApplyError::Closed)?
    }
}

struct Writer {
    shared: Arc<Shared>,
    store: Box<dyn Store>,
    /// Set for a follower: how often to look for other writers' versions.
    follow: Option<std::time::Duration>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let cmd = match self.follow {
                None => match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => return,
                },
                Some(poll) => match rx.recv_timeout(poll) {
                    Ok(cmd) => cmd,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.catch_up() {
                            tracing::warn!(error = %e, "could not read new versions from the store; serving the last one");
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
            };
            match cmd {
                Command::Apply { reply, .. } if self.follow.is_some() => drop(reply.send(Err(ApplyError::ReadOnly))),
                Command::Rollback { reply, .. } if self.follow.is_some() => drop(reply.send(Err(ApplyError::ReadOnly))),
                Command::Apply { txn, who, reply } => drop(reply.send(self.apply(txn, &who))),
                Command::Rollback { to, if_version, who, reply } => {
                    drop(reply.send(self.rollback(to, if_version, &who)))
                }
                Command::History { before, limit, reply } => {
                    drop(reply.send(self.store.history(before, limit).map_err(Into::into)))
                }
                Command::Entry { version, reply } => drop(reply.send(self.store.entry(version).map_err(Into::into))),
                Command::Diff { from, to, reply } => drop(reply.send(self.diff(from, to))),
            }
        }
    }

    fn apply(&mut self, txn: Transaction, who: &Who) -> Result<Committed, ApplyError> {
        let started = Instant::now();
        let base = self.shared.current.load_full();
        let applied = match transaction::apply(&base, &txn) {
            Ok(a) => a,
            Err(e) => {
                self.shared.metrics.rejected(&e);
                return Err(e.into());
            }
        };
        if applied.changes.is_empty() {
            // Nothing to publish: no new version, no history line, no SOA bump.
            self.shared.metrics.unchanged();
            return Ok(Committed { version: base.version(), changes: Arc::from([]) });
        }
        let version = applied.snapshot.version();
        let commit = Commit { version, time_ms: now_ms(), who, txn: &txn, changes: &applied.changes };
        let stored = Instant::now();
        if let Err(e) = self.store.commit(&commit) {
            self.shared.metrics.failed();
            tracing::error!(version, error = %e, "store commit failed; version not published");
            return Err(e.into());
        }
        let commit_time = stored.elapsed();
        let committed = Committed { version, changes: applied.changes.into() };
        self.shared.current.store(Arc::new(applied.snapshot));
        self.shared.versions.send_replace(version);
        let _ = self.shared.changes.send(committed.clone()); // no subscribers is fine
        let snapshot = self.shared.current.load();
        self.shared.metrics.published(&snapshot, Some((started.elapsed() - commit_time, commit_time)));
        tracing::info!(
            version,
            origin = %who.origin,
            uid = ?who.uid,
            changed = committed.changes.len(),
            summary = ?transaction::summary(&committed.changes),
            "table version published"
        );
        Ok(committed)
    }

    /// A follower's step: applies the versions another process committed
    /// since ours, as one publication.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let base = self.shared.current.load_full();
        let stored = self.store.version()?;
        if stored <= base.version() {
            return Ok(());
        }
        let changes = self.store.changes(base.version(), stored)?;
        let mut next = (*base).clone();
        for c in &changes {
            match &c.after {
                Some(entity) => drop(next.put(entity.clone())),
                None => drop(next.delete(&c.key())),
            }
        }
        next.version = stored;
        let committed = Committed { version: stored, changes: changes.into() };
        self.shared.current.store(Arc::new(next));
        self.shared.versions.send_replace(stored);
        let _ = self.shared.changes.send(committed.clone());
        self.shared.metrics.published(&self.shared.current.load(), None);
        tracing::info!(
            version = stored,
            from = base.version(),
            changed = committed.changes.len(),
            "followed the store"
        );
        Ok(())
    }

    fn rollback(&mut self, to: u64, if_version: Option<u64>, who: &Who) -> Result<Committed, ApplyError> {
        let current = self.shared.current.load().version();
        if to >= current {
            return Err(ApplyError::NoSuchVersion(to));
        }
        let net = compose(self.store.changes(to, current)?);
        if net.is_empty() {
            return Err(ApplyError::Unchanged(to));
        }
        let txn = Transaction {
            if_version: Some(if_version.unwrap_or(current)),
            comment: Some(format!("rollback to version {to}")),
            ops: undo_ops(&net),
        };
        let who = Who { origin: format!("rollback:{}", who.origin), ..who.clone() };
        self.apply(txn, &who)
    }

    fn diff(&mut self, from: u64, to: u64) -> Result<Vec<Change>, ApplyError> {
        let current = self.shared.current.load().version();
        let (lo, hi) = (from.min(to), from.max(to));
        if hi > current {
            return Err(ApplyError::NoSuchVersion(hi));
        }
        let net = compose(self.store.changes(lo, hi)?);
        if from <= to {
            return Ok(net);
        }
        Ok(net.into_iter().map(|c| Change { before: c.after, after: c.before, ..c }).collect())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
