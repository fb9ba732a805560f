//! The shared store for several edge nodes: etcd v3 (feature `etcd`).
//!
//! Keys under the configured prefix `P` (default `/edge/`):
//! - `P head`: rewritten by every commit. Its mod revision plus `offset` is
//!   the table version, so versions follow etcd's revision: increasing, with
//!   gaps where other keys of the cluster changed. Value
//!   `{"schema":1,"offset":N,"base":B}`; `offset` is 0 unless the table was
//!   copied in from a store whose version was already higher.
//! - `P e/<kind>/<name>`: one entity, as JSON.
//! - `P h/<base, 20 digits>`: the history record of the commit made on top
//!   of version `base`; its own version is the key's create revision plus
//!   `offset`. Records are never rewritten, so etcd's compaction does not
//!   touch them.
//!
//! A commit is one etcd `Txn`: *if `head`'s mod revision is still the base
//! version's*, put and delete the entities, put the history record and
//! `head`. Two nodes committing on the same base: one succeeds, the other
//! gets [`StoreError::VersionMismatch`] and nothing of it is written.
//!
//! The trait is synchronous (one writer thread); the store runs the async
//! client on its own one-thread runtime and waits for each request, with a
//! timeout, so it may be called from any thread.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, KvClient, SortOrder,
    SortTarget, TlsOptions, Txn, TxnOp, WatchClient,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use super::{to_json, Commit, HistoryEntry, Loaded, Store, StoreError, Wake, Who};
use crate::entity::Entity;
use crate::transaction::{Change, Transaction};

const SCHEMA: u32 = 1;
/// Keys per range request: pages keep each answer far below gRPC's limits.
const PAGE: i64 = 256;
/// The largest answer the client accepts (one page of big records).
const MAX_DECODE: usize = 64 << 20;
/// Pause before sending a request again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Which failed requests may be sent again.
#[derive(Clone, Copy)]
enum Resend {
    /// A read: any failure.
    Read,
    /// A commit: only when etcd cannot have received it.
    Write,
}

impl Resend {
    fn again(self, e: &etcd_client::Error) -> bool {
        if refused(e) {
            return false;
        }
        let text = e.to_string();
        // The client balances over every endpoint, dead members included: a
        // connection refused means the request never left.
        let unsent = text.contains("tcp connect error") || text.contains("no leader");
        unsent || matches!(self, Resend::Read)
    }
}

/// etcd answered, and the answer will not change on a retry: a key the
/// user may not touch (RBAC), or a request etcd rejects (too large, too
/// many operations). Sending it again only hid the answer behind "no
/// answer in N ms" when the last try was still out at the deadline (seen
/// once in CI, on a loaded machine). An expired auth token
/// (UNAUTHENTICATED) is still sent again.
fn refused(e: &etcd_client::Error) -> bool {
    // gRPC status codes: INVALID_ARGUMENT 3, PERMISSION_DENIED 7.
    matches!(e, etcd_client::Error::GRpcStatus(status) if matches!(status.code() as i32, 3 | 7))
}

/// Where the etcd cluster is and how to log in, from `[store.etcd]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per cluster member.
    pub endpoints: Vec<String>,
    /// Every key of the table starts with it.
    pub prefix: String,
    /// Each request's limit: the longest a write waits before it is refused.
    pub timeout: Duration,
    /// etcd user (RBAC); its password is read from `password_file`.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// CA bundle that signed the members' certificates (https endpoints).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, when the members require one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/edge/".into(),
            timeout: Duration::from_secs(2),
            user: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// etcd-backed [`Store`].
pub struct EtcdStore {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    client: Client,
    kv: KvClient,
    prefix: String,
    describe: String,
    timeout: Duration,
    /// Version minus revision, from `head` (read on every load and version).
    offset: u64,
}

/// `head`'s value.
#[derive(Debug, Serialize, Deserialize)]
struct HeadValue {
    schema: u32,
    offset: u64,
    base: u64,
}

/// What `head` says.
struct Head {
    /// 0: the prefix holds no table yet.
    version: u64,
    /// The cluster's revision when it was read.
    read_at: i64,
}

/// A history record as written.
#[derive(Serialize)]
struct RecordOut<'a> {
    time_ms: u64,
    who: &'a Who,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    changed: usize,
    txn: &'a Transaction,
    changes: &'a [Change],
}

/// A history record as read; `C` is `Vec<Change>`, or `IgnoredAny` when
/// only the summary is wanted.
#[derive(Deserialize)]
struct RecordIn<C> {
    time_ms: u64,
    who: Who,
    #[serde(default)]
    comment: Option<String>,
    changed: usize,
    txn: Transaction,
    changes: C,
}

impl EtcdStore {
    /// Connects to the cluster (reading the password and TLS files). The
    /// connection is lazy: an unreachable cluster fails the first request.
    pub fn open(config: &EtcdConfig) -> Result<Self, StoreError> {
        let describe = format!("etcd {} prefix {}", config.endpoints.join(","), config.prefix);
        let remote = |reason: String| StoreError::Remote { path: describe.clone(), reason };
        if config.endpoints.is_empty() {
            return Err(remote("no endpoints".into()));
        }
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| remote(format!("{what} {}: {e}", path.display())))
        };
        let mut options = ConnectOptions::new()
            .with_timeout(config.timeout)
            .with_connect_timeout(config.timeout)
            .with_keep_alive(Duration::from_secs(1), config.timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(user) = &config.user {
            let password = match &config.password_file {
                Some(path) => String::from_utf8_lossy(&read("password file", path)?).trim_end().to_string(),
                None => return Err(remote(format!("user {user} has no password_file"))),
            };
            options = options.with_user(user.clone(), password);
        }
        if config.ca_file.is_some() || config.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read("CA file", ca)?));
            }
            match (&config.cert_file, &config.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(read("certificate", cert)?, read("key", key)?));
                }
                (None, None) => {}
                _ => return Err(remote("cert_file and key_file go together".into())),
            }
            options = options.with_tls(tls);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| remote(format!("cannot start the client runtime: {e}")))?;
        let endpoints = config.endpoints.clone();
        let client =
            match wait(&runtime, config.timeout, async move { Client::connect(endpoints, Some(options)).await }) {
                Ok(client) => client,
                Err(e) => {
                    // Dropping a runtime inside another one (edge's) panics.
                    runtime.shutdown_background();
                    return Err(remote(format!("connect: {e}")));
                }
            };
        let kv = client.kv_client().max_decoding_message_size(MAX_DECODE);
        Ok(Self {
            runtime: Some(runtime),
            client,
            kv,
            prefix: config.prefix.clone(),
            describe,
            timeout: config.timeout,
            offset: 0,
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn history_key(&self, base: u64) -> String {
        self.key(&format!("h/{base:020}"))
    }

    fn remote(&self, reason: String) -> StoreError {
        StoreError::Remote { path: self.describe.clone(), reason }
    }

    fn corrupt(&self, what: impl Into<String>, reason: impl ToString) -> StoreError {
        StoreError::Corrupt { path: self.describe.clone(), what: what.into(), reason: reason.to_string() }
    }

    /// Runs one request on the client's runtime and waits for it; a request
    /// that failed without reaching etcd (a dead member, an election) is
    /// sent again until the timeout, and so is any failed read.
    fn call<T, F, Fut>(&self, what: &str, resend: Resend, request: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let runtime = self.runtime.as_ref().ok_or_else(|| self.remote("client stopped".into()))?;
        let timeout = self.timeout;
        let retried = async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match request().await {
                    Err(e) if resend.again(&e) && tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    other => return other,
                }
            }
        };
        wait(runtime, timeout, retried).map_err(|e| self.remote(format!("{what}: {e}")))
    }

    fn head(&mut self) -> Result<Head, StoreError> {
        let (kv, key) = (self.kv.clone(), self.key("head"));
        let resp = self.call("read head", Resend::Read, move || {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })?;
        let read_at = resp.header().map_or(0, |h| h.revision());
        let Some(head) = resp.kvs().first() else {
            return Ok(Head { version: 0, read_at });
        };
        let value: HeadValue = serde_json::from_slice(head.value()).map_err(|e| self.corrupt("head", e))?;
        if value.schema != SCHEMA {
            return Err(self.corrupt("head", format!("schema {}, this build reads {SCHEMA}", value.schema)));
        }
        self.offset = value.offset;
        Ok(Head { version: head.mod_revision() as u64 + value.offset, read_at })
    }

    /// Every key in `[start, end)`, in key order (or reversed), at most
    /// `limit`, all read at one revision (`at`, or the first page's).
    fn range(
        &self,
        start: String,
        end: String,
        descend: bool,
        limit: usize,
        mut at: i64,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let (mut start, mut end) = (start.into_bytes(), end.into_bytes());
        let mut out: Vec<KeyValue> = Vec::new();
        while out.len() < limit {
            let page = PAGE.min((limit - out.len()) as i64);
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page).with_revision(at);
            if descend {
                options = options.with_sort(SortTarget::Key, SortOrder::Descend);
            }
            let (kv, key) = (self.kv.clone(), start.clone());
            let mut resp = self.call("range read", Resend::Read, move || {
                let (mut kv, key, options) = (kv.clone(), key.clone(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })?;
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else { break };
            if descend {
                end = last.key().to_vec();
            } else {
                start = last.key().to_vec();
                start.push(0);
            }
            out.extend(kvs);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// The base version in a history key, and the record's own version.
    fn versions(&self, kv: &KeyValue) -> Result<(u64, u64), StoreError> {
        let key = String::from_utf8_lossy(kv.key());
        let base = key
            .strip_prefix(&self.key("h/"))
            .and_then(|b| b.parse::<u64>().ok())
            .ok_or_else(|| self.corrupt(format!("history key {key}"), "not h/<20 digits>"))?;
        Ok((base, kv.create_revision() as u64 + self.offset))
    }

    fn record<C: serde::de::DeserializeOwned>(&self, kv: &KeyValue) -> Result<(u64, RecordIn<C>), StoreError> {
        let (_, version) = self.versions(kv)?;
        let record = serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(format!("history {version}"), e))?;
        Ok((version, record))
    }

    fn entry_of<C>(version: u64, r: RecordIn<C>, changes: Option<Vec<Change>>) -> HistoryEntry {
        HistoryEntry {
            version,
            time_ms: r.time_ms,
            who: r.who,
            comment: r.comment,
            changed: r.changed,
            txn: r.txn,
            changes,
        }
    }

    fn no_such(&self, version: u64) -> StoreError {
        StoreError::NoSuchVersion { path: self.describe.clone(), version }
    }
}

/// Runs `request` on `runtime` and blocks this thread until it ends or
/// `timeout` passes. Never enters the runtime, so any thread may call it.
fn wait<T: Send + 'static>(
    runtime: &Runtime,
    timeout: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, request).await);
    });
    match rx.recv() {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(explain(&e)),
        Ok(Err(_)) => Err(format!("no answer in {} ms", timeout.as_millis())),
        Err(_) => Err("the client runtime stopped".into()),
    }
}

/// The client's error, with the etcd setting to change when it is a limit.
fn explain(e: &etcd_client::Error) -> String {
    let text = e.to_string();
    if text.contains("too many operations in txn request") {
        format!("{text} (the transaction changes more entities than etcd's --max-txn-ops allows; raise it, see docs/multi-node.md)")
    } else if text.contains("request is too large") {
        format!("{text} (raise etcd's --max-request-bytes, see docs/multi-node.md)")
    } else {
        text
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let head = self.head()?;
        if head.version == 0 {
            return Ok(Loaded::default());
        }
        let kvs = self.range(self.key("e/"), self.key("e0"), false, usize::MAX, head.read_at)?;
        let mut entities = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let entity: Entity = serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(key.clone(), e))?;
            if key != self.key(&format!("e/{}/{}", entity.kind().as_str(), &**entity.name())) {
                return Err(self.corrupt(key, "key differs from its body"));
            }
            entities.push(entity);
        }
        Ok(Loaded { version: head.version, entities })
    }

    fn commit(&mut self, c: &Commit<'_>) -> Result<u64, StoreError> {
        let head_key = self.key("head");
        let guard = if c.base == 0 {
            Compare::version(head_key.clone(), CompareOp::Equal, 0)
        } else {
            let revision = c.base.checked_sub(self.offset).ok_or_else(|| self.no_such(c.base))?;
            Compare::mod_revision(head_key.clone(), CompareOp::Equal, revision as i64)
        };
        let mut ops = Vec::with_capacity(c.changes.len() + 2);
        for change in c.changes {
            let key = self.key(&format!("e/{}/{}", change.kind.as_str(), &*change.name));
            ops.push(match &change.after {
                Some(entity) => TxnOp::put(key, to_json(entity), None),
                None => TxnOp::delete(key, None),
            });
        }
        let record = RecordOut {
            time_ms: c.time_ms,
            who: c.who,
            comment: c.txn.comment.as_deref(),
            changed: c.changes.len(),
            txn: c.txn,
            changes: c.changes,
        };
        ops.push(TxnOp::put(self.history_key(c.base), to_json(&record), None));
        let head = HeadValue { schema: SCHEMA, offset: self.offset, base: c.base };
        ops.push(TxnOp::put(head_key, to_json(&head), None));
        let txn = Txn::new().when([guard]).and_then(ops);
        let kv = self.kv.clone();
        let resp = self.call("commit", Resend::Write, move || {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })?;
        if !resp.succeeded() {
            let found = self.head()?.version;
            return Err(StoreError::VersionMismatch { path: self.describe.clone(), expected: c.base, found });
        }
        let revision = resp.header().map(|h| h.revision()).filter(|r| *r > 0).ok_or_else(|| {
            self.remote("commit: the answer has no revision; the commit is stored, restart to read it".into())
        })?;
        Ok(revision as u64 + self.offset)
    }

    fn history(&mut self, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let before = before.unwrap_or(u64::MAX);
        // Records made on a base below `before`; the newest may be above it.
        let kvs = self.range(self.key("h/"), self.history_key(before), true, limit.saturating_add(1), 0)?;
        let mut out = Vec::with_capacity(limit);
        for kv in &kvs {
            let (version, record) = self.record::<serde::de::IgnoredAny>(kv)?;
            if version <= before && out.len() < limit {
                out.push(Self::entry_of(version, record, None));
            }
        }
        Ok(out)
    }

    fn entry(&mut self, version: u64) -> Result<HistoryEntry, StoreError> {
        let kvs = self.range(self.key("h/"), self.history_key(version), true, 1, 0)?;
        let kv = kvs.first().ok_or_else(|| self.no_such(version))?;
        let (found, mut record) = self.record::<Vec<Change>>(kv)?;
        if found != version {
            return Err(self.no_such(version));
        }
        let changes = std::mem::take(&mut record.changes);
        Ok(Self::entry_of(found, record, Some(changes)))
    }

    fn changes(&mut self, from: u64, to: u64) -> Result<Vec<Change>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let kvs = self.range(self.history_key(from), self.history_key(to), false, usize::MAX, 0)?;
        let mut out = Vec::new();
        let mut at = from;
        for kv in &kvs {
            let (base, _) = self.versions(kv)?;
            if base != at {
                return Err(self.no_such(at));
            }
            let (version, record) = self.record::<Vec<Change>>(kv)?;
            out.extend(record.changes);
            at = version;
        }
        if at != to {
            return Err(self.no_such(to));
        }
        Ok(out)
    }

    fn version(&mut self) -> Result<u64, StoreError> {
        Ok(self.head()?.version)
    }

    fn import(&mut self, table: &Loaded, who: &Who, comment: &str) -> Result<u64, StoreError> {
        let head = self.head()?;
        if head.version != 0 {
            return Err(StoreError::NotEmpty { path: self.describe.clone(), version: head.version });
        }
        // The copy's version must not go below the source's (dnsd's serial).
        self.offset = table.version.saturating_sub(head.read_at.max(0) as u64);
        let (txn, changes) = super::import_commit_parts(table, comment);
        let commit = Commit { base: 0, version: 0, time_ms: super::now_ms(), who, txn: &txn, changes: &changes };
        self.commit(&commit)
    }

    fn watch(&mut self, wake: Wake) -> Result<bool, StoreError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| self.remote("client stopped".into()))?;
        runtime.spawn(watch_head(self.client.watch_client(), self.key("head"), wake, self.describe.clone()));
        Ok(true)
    }
}

/// Watches `head` and wakes the table on every event, and whenever the
/// watch is (re)established or lost: the table then reads the store itself,
/// so no event can be missed and a compacted revision does not matter.
async fn watch_head(mut client: WatchClient, key: String, wake: Wake, describe: String) {
    let mut lost = false;
    loop {
        match client.watch(key.clone(), None).await {
            Ok(mut stream) => {
                if lost {
                    tracing::info!(store = %describe, "etcd watch re-established");
                    lost = false;
                }
                wake();
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) if resp.canceled() => break,
                        Ok(Some(resp)) if !resp.events().is_empty() => wake(),
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                wake();
            }
            Err(e) if !lost => {
                tracing::warn!(store = %describe, error = %e, "etcd watch lost; retrying every 500 ms");
                lost = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; this never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
