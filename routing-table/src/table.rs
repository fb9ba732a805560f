//! The live table: the current [`Snapshot`] in one `ArcSwap`, one writer
//! thread that owns the [`Store`], and a `watch` channel of versions.
//!
//! Readers call [`Table::load`] once per request or connection and use that
//! snapshot to the end. Writers send transactions to the writer thread,
//! which validates, commits to the store, then swaps — in that order, so a
//! version is durable before anyone can see it.
//!
//! With a shared store (etcd, several edge nodes) the writer also follows
//! the other nodes' commits: the store wakes it, and it polls every
//! [`SHARED_POLL`] besides. A commit that lost a race to another node is
//! validated again on the caught-up table (so `if_version` gives a 409, and a
//! transaction never mixes with another). While the store cannot be read the
//! table keeps serving its last snapshot, reports itself [`Stale`], and
//! refuses writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot, watch};

use crate::metrics::TableMetrics;
use crate::snapshot::Snapshot;
use crate::store::{now_ms, Commit, HistoryEntry, Store, StoreError, Who};
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
    #[error("the shared store cannot be reached ({0}); this node keeps serving version {1} but refuses changes until it is back")]
    Unavailable(String, u64),
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

/// How often a table on a shared store checks the store when nothing woke
/// it: the longest a lost connection goes unnoticed, plus the store's own
/// request timeout.
pub const SHARED_POLL: Duration = Duration::from_secs(1);

/// How many times a commit that lost a race to another node is validated
/// again on the caught-up table before the error is returned.
const COMMIT_RETRIES: usize = 8;

/// Why a table on a shared store may be behind: it could not read the store.
#[derive(Debug, Clone, Serialize)]
pub struct Stale {
    /// When it first failed, in ms since the Unix epoch.
    pub since_ms: u64,
    /// The store's error.
    pub error: String,
}

/// What a transaction would do, without doing it.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The version it would create.
    pub version: u64,
    pub changes: Vec<Change>,
}

type Reply<T> = oneshot::Sender<Result<T, ApplyError>>;

enum Command {
    Apply {
        txn: Transaction,
        who: Who,
        reply: Reply<Committed>,
    },
    Rollback {
        to: u64,
        if_version: Option<u64>,
        who: Who,
        reply: Reply<Committed>,
    },
    History {
        before: Option<u64>,
        limit: usize,
        reply: Reply<Vec<HistoryEntry>>,
    },
    Entry {
        version: u64,
        reply: Reply<HistoryEntry>,
    },
    Diff {
        from: u64,
        to: u64,
        reply: Reply<Vec<Change>>,
    },
    /// The shared store may have a newer version.
    CatchUp,
}

struct Shared {
    current: ArcSwap<Snapshot>,
    stale: ArcSwapOption<Stale>,
    /// A `CatchUp` is queued: later wake-ups need not queue another.
    wake_queued: AtomicBool,
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
    /// Loads the table from `store` and starts the writer thread. A shared
    /// store (one that [watches](Store::watch)) is followed as well.
    pub fn open(store: Box<dyn Store>, metrics: TableMetrics) -> Result<Table, OpenError> {
        Self::start(store, metrics, Mode::Owner)
    }

    /// A read-only table that follows a store another process writes (the
    /// standalone dnsd beside `edge`): every `poll` it reads the store's
    /// version and applies the stored changes since its own, publishing
    /// them like the writer does. Writes are refused with
    /// [`ApplyError::ReadOnly`]; history and diff work.
    pub fn follow(store: Box<dyn Store>, metrics: TableMetrics, poll: std::time::Duration) -> Result<Table, OpenError> {
        Self::start(store, metrics, Mode::Follow(poll))
    }

    fn start(mut store: Box<dyn Store>, metrics: TableMetrics, mut mode: Mode) -> Result<Table, OpenError> {
        let loaded = store.load()?;
        let version = loaded.version;
        let snapshot =
            transaction::build(version, loaded.entities).map_err(|source| OpenError::Invalid { version, source })?;
        metrics.published(&snapshot, None);
        let (versions, _) = watch::channel(version);
        let (changes, _) = broadcast::channel(CHANGES_BACKLOG);
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(snapshot),
            stale: ArcSwapOption::empty(),
            wake_queued: AtomicBool::new(false),
            versions,
            changes,
            metrics,
        });
        let (commands, rx) = mpsc::channel();
        let describe: Arc<str> = store.describe().into();
        if matches!(mode, Mode::Owner) {
            let (wake_tx, wake_shared) = (commands.clone(), Arc::downgrade(&shared));
            let wake: crate::store::Wake = Arc::new(move || {
                let Some(shared) = wake_shared.upgrade() else { return };
                if !shared.wake_queued.swap(true, Ordering::AcqRel) {
                    let _ = wake_tx.send(Command::CatchUp);
                }
            });
            if store.watch(wake)? {
                mode = Mode::Shared;
            }
        }
        let writer = Writer { shared: shared.clone(), store, mode };
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

    /// Set while a table on a shared store cannot read it: the snapshot
    /// served may be behind the other nodes'.
    pub fn stale(&self) -> Option<Arc<Stale>> {
        self.shared.stale.load_full()
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

/// What the writer thread does besides applying commands.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Only this process writes the store.
    Owner,
    /// A read-only follower of a store another process writes, polled.
    Follow(Duration),
    /// A store several nodes write (etcd): woken by the store, polled too.
    Shared,
}

struct Writer {
    shared: Arc<Shared>,
    store: Box<dyn Store>,
    mode: Mode,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let poll = match self.mode {
                Mode::Owner => None,
                Mode::Follow(poll) => Some(poll),
                Mode::Shared => Some(SHARED_POLL),
            };
            let cmd = match poll {
                None => match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => return,
                },
                Some(poll) => match rx.recv_timeout(poll) {
                    Ok(cmd) => cmd,
                    Err(mpsc::RecvTimeoutError::Timeout) => Command::CatchUp,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
            };
            let read_only = matches!(self.mode, Mode::Follow(_));
            match cmd {
                Command::CatchUp => {
                    self.shared.wake_queued.store(false, Ordering::Release);
                    let _ = self.follow();
                }
                Command::Apply { reply, .. } if read_only => drop(reply.send(Err(ApplyError::ReadOnly))),
                Command::Rollback { reply, .. } if read_only => drop(reply.send(Err(ApplyError::ReadOnly))),
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

    /// Applies `txn`; on a shared store, first makes sure the store is
    /// reachable, and validates again after catching up when another node
    /// committed first.
    fn apply(&mut self, txn: Transaction, who: &Who) -> Result<Committed, ApplyError> {
        if !matches!(self.mode, Mode::Shared) {
            return self.apply_once(&txn, who);
        }
        if self.shared.stale.load().is_some() {
            self.follow().map_err(|e| self.unavailable(e))?;
        }
        let mut tries = 0;
        loop {
            match self.apply_once(&txn, who) {
                Err(ApplyError::Store(StoreError::VersionMismatch { .. })) if tries < COMMIT_RETRIES => {
                    tries += 1;
                    self.follow().map_err(|e| self.unavailable(e))?;
                }
                Err(ApplyError::Store(e @ (StoreError::Remote { .. } | StoreError::Corrupt { .. }))) => {
                    self.set_stale(&e);
                    return Err(self.unavailable(e));
                }
                other => return other,
            }
        }
    }

    fn unavailable(&self, e: StoreError) -> ApplyError {
        ApplyError::Unavailable(e.to_string(), self.shared.current.load().version())
    }

    fn apply_once(&mut self, txn: &Transaction, who: &Who) -> Result<Committed, ApplyError> {
        let started = Instant::now();
        let base = self.shared.current.load_full();
        let applied = match transaction::apply(&base, txn) {
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
        let mut snapshot = applied.snapshot;
        let commit = Commit {
            base: base.version(),
            version: snapshot.version(),
            time_ms: now_ms(),
            who,
            txn,
            changes: &applied.changes,
        };
        let stored = Instant::now();
        let version = match self.store.commit(&commit) {
            Ok(version) => version,
            Err(e @ StoreError::VersionMismatch { .. }) if matches!(self.mode, Mode::Shared) => {
                // Another node committed first: caught up and validated again by the caller.
                tracing::debug!(base = base.version(), error = %e, "lost a commit race to another node");
                return Err(e.into());
            }
            Err(e) => {
                self.shared.metrics.failed();
                tracing::warn!(base = base.version(), error = %e, "store commit failed; version not published");
                return Err(e.into());
            }
        };
        // A shared store numbers versions itself (etcd's revision).
        snapshot.version = version;
        let commit_time = stored.elapsed();
        let committed = self.publish(snapshot, applied.changes, Some((started.elapsed() - commit_time, commit_time)));
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

    /// Catches up with the store, and keeps the stale mark true: set when
    /// the store cannot be read, cleared when it can again.
    fn follow(&mut self) -> Result<(), StoreError> {
        match self.catch_up() {
            Ok(()) => {
                if let Some(stale) = self.shared.stale.swap(None) {
                    self.shared.metrics.stale(false);
                    tracing::warn!(
                        version = self.shared.current.load().version(),
                        since_ms = stale.since_ms,
                        "the store is reachable again; table caught up"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.set_stale(&e);
                Err(e)
            }
        }
    }

    /// Makes `snapshot` the live one and tells the subscribers: the one way
    /// a version is published, by a commit here or one followed from the store.
    fn publish(&self, snapshot: Snapshot, changes: Vec<Change>, times: Option<(Duration, Duration)>) -> Committed {
        let committed = Committed { version: snapshot.version(), changes: changes.into() };
        self.shared.current.store(Arc::new(snapshot));
        self.shared.versions.send_replace(committed.version);
        let _ = self.shared.changes.send(committed.clone()); // no subscribers is fine
        self.shared.metrics.published(&self.shared.current.load(), times);
        committed
    }

    fn set_stale(&self, e: &StoreError) {
        let previous = self.shared.stale.load_full();
        let since_ms = previous.as_ref().map_or_else(now_ms, |s| s.since_ms);
        self.shared.stale.store(Some(Arc::new(Stale { since_ms, error: e.to_string() })));
        self.shared.metrics.stale(true);
        if previous.is_none() {
            tracing::error!(
                version = self.shared.current.load().version(),
                error = %e,
                "cannot read the store: serving the last version, marked stale, refusing changes"
            );
        }
    }

    /// Applies the versions another process committed since ours, as one
    /// publication. When the store no longer has the history between
    /// (pruned), it reloads the whole table and publishes the difference.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let base = self.shared.current.load_full();
        let stored = self.store.version()?;
        if stored < base.version() {
            return Err(StoreError::Corrupt {
                path: self.store.describe(),
                what: "version".into(),
                reason: format!(
                    "went back from {} to {stored}: the store was emptied or restored from an older copy; restart to adopt it",
                    base.version()
                ),
            });
        }
        if stored == base.version() {
            return Ok(());
        }
        let (next, changes) = match self.store.changes(base.version(), stored) {
            Ok(changes) => {
                let mut next = (*base).clone();
                for c in &changes {
                    match &c.after {
                        Some(entity) => drop(next.put(entity.clone())),
                        None => drop(next.delete(&c.key())),
                    }
                }
                next.version = stored;
                (next, changes)
            }
            Err(StoreError::NoSuchVersion { .. }) => self.reload(&base)?,
            Err(e) => return Err(e),
        };
        let committed = self.publish(next, changes, None);
        tracing::info!(
            version = committed.version,
            from = base.version(),
            changed = committed.changes.len(),
            "followed the store"
        );
        Ok(())
    }

    /// The whole stored table, and how it differs from `base`.
    fn reload(&mut self, base: &Snapshot) -> Result<(Snapshot, Vec<Change>), StoreError> {
        let loaded = self.store.load()?;
        let version = loaded.version;
        let describe = self.store.describe();
        let next = transaction::build(version, loaded.entities).map_err(|e| StoreError::Corrupt {
            path: describe,
            what: format!("table at version {version}"),
            reason: e.to_string(),
        })?;
        let mut changes = Vec::new();
        for after in next.entities() {
            let before = base.get(&after.key());
            if before.as_ref() != Some(&after) {
                changes.push(Change { kind: after.kind(), name: after.name().clone(), before, after: Some(after) });
            }
        }
        for before in base.entities() {
            if next.get(&before.key()).is_none() {
                changes.push(Change {
                    kind: before.kind(),
                    name: before.name().clone(),
                    before: Some(before),
                    after: None,
                });
            }
        }
        tracing::warn!(
            from = base.version(),
            to = version,
            changed = changes.len(),
            "history missing: reloaded the whole table"
        );
        Ok((next, changes))
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
