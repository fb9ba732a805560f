//! The `/v1` control API: requests in, JSON out. Every error is a JSON
//! object `{"error": {"status", "message", "field"?, "op"?}}` and changes
//! nothing. See `docs/control-api.md` for each endpoint.

use std::collections::HashMap;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use routing_table::{ApplyError, Kind, Op, Recipient, Table, Transaction, TxnError, Who};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Peer;
use crate::sessions::Sessions;
use std::sync::Arc;

/// Most history entries one request returns.
pub const MAX_HISTORY: usize = 1000;

/// The control API over one table.
pub struct Api {
    table: Table,
    sessions: Arc<Sessions>,
    cache: Option<Arc<crate::http::Cache>>,
    certs: Option<Arc<crate::http::Certs>>,
    acme: Option<Arc<crate::http::acme::Acme>>,
}

/// An error reply.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<usize>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: None, op: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.op, &self.field) {
            (Some(op), Some(field)) => write!(f, "ops[{op}].{field}: {}", self.message),
            (None, Some(field)) => write!(f, "{field}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl From<TxnError> for ApiError {
    fn from(e: TxnError) -> Self {
        let message = e.to_string();
        match e {
            TxnError::VersionConflict { .. } => Self::new(StatusCode::CONFLICT, message),
            TxnError::Invalid { op, field, reason } => {
                Self { status: StatusCode::UNPROCESSABLE_ENTITY, message: reason, field: Some(field), op: Some(op) }
            }
            _ => Self::new(StatusCode::UNPROCESSABLE_ENTITY, message),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Rejected(t) => t.into(),
            ApplyError::NoSuchVersion(_) => Self::not_found(e.to_string()),
            ApplyError::Unchanged(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            ApplyError::Unavailable(..) | ApplyError::ReadOnly => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "control request failed inside");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

type Reply = Result<Value, ApiError>;

/// Body of the move endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachePurgeBody {
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    to: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    databases_to: Option<String>,
    #[serde(default)]
    if_version: Option<u64>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    dry_run: bool,
    /// After the move, close the moved users' sessions still on another backend.
    #[serde(default)]
    kick: bool,
    /// Hold the moved users' new logins until the move is committed (at
    /// most this many seconds).
    #[serde(default)]
    hold_secs: Option<u64>,
}

/// Longest login hold an admin may ask for.
const MAX_HOLD_SECS: u64 = 300;

/// What to do around a commit besides applying it.
#[derive(Debug, Clone, Copy, Default)]
struct Around {
    dry_run: bool,
    kick: bool,
    hold_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: u64,
    #[serde(default)]
    if_version: Option<u64>,
}

impl Api {
    pub fn new(table: Table, sessions: Arc<Sessions>) -> Self {
        Self { table, sessions, cache: None, certs: None, acme: None }
    }

    /// Serves `/v1/cache` and `/v1/certs` for the HTTP proxy.
    pub fn with_http(
        mut self,
        cache: Option<Arc<crate::http::Cache>>,
        certs: Option<Arc<crate::http::Certs>>,
        acme: Option<Arc<crate::http::acme::Acme>>,
    ) -> Self {
        self.cache = cache;
        self.certs = certs;
        self.acme = acme;
        self
    }

    fn certs(&self) -> Result<&crate::http::Certs, ApiError> {
        self.certs.as_deref().ok_or_else(|| ApiError::not_found("no HTTPS listener (http.tls_listen)"))
    }

    fn cert_json(&self, cert: &crate::http::certs::Cert) -> Value {
        let site = cert.name.strip_prefix("acme-");
        let acme = site.and_then(|s| self.acme.as_ref().map(|a| a.states().get(s).cloned().unwrap_or_default()));
        json!({
            "name": cert.name,
            "names": cert.names,
            "not_before": cert.not_before,
            "not_after": cert.not_after,
            "acme": acme,
        })
    }

    fn certs_list(&self) -> Reply {
        let certs = self.certs()?;
        let list: Vec<Value> = certs.list().iter().map(|c| self.cert_json(c)).collect();
        let pending: Value = match &self.acme {
            Some(acme) => json!(acme
                .states()
                .into_iter()
                .filter(|(_, s)| s.last_error.is_some())
                .collect::<std::collections::BTreeMap<_, _>>()),
            None => Value::Null,
        };
        Ok(json!({ "dir": certs.dir(), "certificates": list, "acme_failing": pending }))
    }

    fn cert_show(&self, raw: &str) -> Reply {
        let certs = self.certs()?;
        let name = percent_decode(raw);
        let cert = certs
            .get(&name)
            .or_else(|| certs.get(&crate::http::acme::cert_name(&name)))
            .ok_or_else(|| ApiError::not_found(format!("no certificate `{name}` (nor `acme-{name}`)")))?;
        Ok(self.cert_json(&cert))
    }

    /// Orders a site's ACME certificate now.
    fn cert_renew(&self, raw: &str) -> Reply {
        let acme = self.acme.as_ref().ok_or_else(|| ApiError::not_found("ACME is off (no [http.acme])"))?;
        let name = percent_decode(raw);
        let name = name.strip_prefix("acme-").unwrap_or(&name).to_string();
        let snap = self.table.load();
        let site = snap.site(&name).ok_or_else(|| ApiError::not_found(format!("no site `{name}`")))?;
        if !acme.wants(site) {
            return Err(ApiError::bad(format!(
                "site `{name}` does not use ACME (policy.tls.acme, or http.acme.all_sites)"
            )));
        }
        acme.renew(&name);
        Ok(json!({ "site": name, "renewing": true }))
    }

    fn cache(&self) -> Result<&crate::http::Cache, ApiError> {
        self.cache
            .as_deref()
            .ok_or_else(|| ApiError::not_found("the HTTP cache is off (no [http], or cache_bytes = 0)"))
    }

    /// `{"site": NAME}` drops a site's responses; `{"url": URL}` one URL's
    /// (every variant), for the site that serves its host now.
    fn cache_purge(&self, body: CachePurgeBody) -> Reply {
        let cache = self.cache()?;
        let (site, purged) = match (body.site, body.url) {
            (Some(site), None) => {
                let name =
                    routing_table::name::ident(&site).map_err(|e| ApiError::bad(format!("site `{site}` {e}")))?;
                (name.to_string(), cache.purge_site(&name))
            }
            (None, Some(url)) => {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                    .ok_or_else(|| ApiError::bad(format!("url `{url}`: give http://host/path or https://host/path")))?;
                let (authority, path) = match rest.find('/') {
                    Some(i) => rest.split_at(i),
                    None => (rest, "/"),
                };
                let host = crate::http::router::host_of(authority)
                    .ok_or_else(|| ApiError::bad(format!("url `{url}`: `{authority}` is not a host")))?
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                let snap = self.table.load();
                let site = snap
                    .site_for_host(&host)
                    .map(|m| m.site.name.to_string())
                    .ok_or_else(|| ApiError::not_found(format!("no site serves `{host}`")))?;
                let purged = cache.purge_url(&site, &host, path);
                (site, purged)
            }
            _ => return Err(ApiError::bad("give exactly one of `site` and `url`")),
        };
        tracing::info!(site = %site, purged, "cache purge");
        Ok(json!({ "site": site, "purged": purged }))
    }

    /// Answers one request. Never panics on input; always JSON.
    pub async fn handle(&self, req: Request<Incoming>, peer: Peer, max_body: usize) -> Response<Full<Bytes>> {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let reply = if peer.allowed {
            self.route(req, peer, max_body).await
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, format!("uid {} is not allowed on the control socket", peer.uid)))
        };
        let (status, body) = match reply {
            Ok(body) => (StatusCode::OK, body),
            Err(e) => (e.status, json!({ "error": e })),
        };
        log_request(&method, &path, peer, status, &body);
        respond(status, &body)
    }

    async fn route(&self, req: Request<Incoming>, peer: Peer, max_body: usize) -> Reply {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = parse_query(req.uri().query());
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let who = Who { origin: "control".into(), uid: Some(peer.uid), gid: Some(peer.gid), pid: peer.pid };
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["v1", "status"]) => Ok(self.status()),
            (Method::GET, ["v1", "table"]) => Ok(self.table_all()),
            (Method::GET, ["v1", "table", kind]) => self.table_kind(kind),
            (Method::GET, ["v1", "table", kind, name]) => self.table_entity(kind, name),
            (Method::GET, ["v1", "lookup"]) => self.lookup(&query),
            (Method::POST, ["v1", "transactions"]) => {
                let hold_secs = query.get("hold").map(|v| number(v, "hold")).transpose()?;
                let around = Around { dry_run: flag(&query, "dry_run"), kick: flag(&query, "kick"), hold_secs };
                let txn = read_json(req, max_body).await?;
                self.commit(txn, who, around).await
            }
            (Method::POST, ["v1", "transactions", "dry-run"]) => {
                self.commit(read_json(req, max_body).await?, who, Around { dry_run: true, ..Around::default() }).await
            }
            (Method::GET, ["v1", "cache"]) => Ok(json!(self.cache()?.stats())),
            (Method::GET, ["v1", "certs"]) => self.certs_list(),
            (Method::GET, ["v1", "certs", name]) => self.cert_show(name),
            (Method::POST, ["v1", "certs", name, "renew"]) => self.cert_renew(name),
            (Method::POST, ["v1", "cache", "purge"]) => self.cache_purge(read_json(req, max_body).await?),
            (Method::GET, ["v1", "sessions"]) => {
                let sessions = self.sessions.list(query.get("user").map(String::as_str));
                Ok(json!({ "sessions": sessions }))
            }
            (Method::POST, ["v1", kind @ ("sites" | "members" | "backends"), name, action @ ("move" | "evacuate")]) => {
                let body: MoveBody = read_json(req, max_body).await?;
                let op = move_op(kind, action, name, &body)?;
                let around = Around { dry_run: body.dry_run, kick: body.kick, hold_secs: body.hold_secs };
                let txn = Transaction { if_version: body.if_version, comment: body.comment, ops: vec![op] };
                self.commit(txn, who, around).await
            }
            (Method::POST, ["v1", "mailboxes", user, "move"]) => {
                let body: MoveBody = read_json(req, max_body).await?;
                let user = percent_decode(user);
                let snap = self.table.load();
                let mut login = snap
                    .mail_login(&user)
                    .ok_or_else(|| ApiError::not_found(format!("no mail_login `{user}`")))?
                    .as_ref()
                    .clone();
                login.backend = body.to.as_str().into();
                // Guarded by the version read, unless the caller gave one.
                let if_version = body.if_version.or(Some(snap.version()));
                let op = Op::Put { entity: routing_table::Entity::MailLogin(login) };
                let around = Around { dry_run: body.dry_run, kick: body.kick, hold_secs: body.hold_secs };
                self.commit(Transaction { if_version, comment: body.comment, ops: vec![op] }, who, around).await
            }
            (Method::GET, ["v1", "history"]) => self.history(&query).await,
            (Method::GET, ["v1", "history", version]) => {
                let entry = self.table.history_entry(number(version, "version")?).await?;
                Ok(json!(entry))
            }
            (Method::GET, ["v1", "diff"]) => self.diff(&query).await,
            (Method::POST, ["v1", "rollback"]) => {
                let body: RollbackBody = read_json(req, max_body).await?;
                let done = self.table.rollback(body.to, body.if_version, who).await?;
                Ok(json!({ "version": done.version, "changes": done.changes }))
            }
            (_, ["v1", "status" | "table" | "lookup" | "history" | "diff" | "sessions" | "cache"])
            | (_, ["v1", "cache", "purge"])
            | (_, ["v1", "table" | "history", ..])
            | (_, ["v1", "transactions" | "rollback", ..]) => {
                Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {path}", req.method())))
            }
            _ => Err(ApiError::not_found(format!("no endpoint {path}; see docs/control-api.md"))),
        }
    }

    fn status(&self) -> Value {
        let snap = self.table.load();
        json!({
            "version": snap.version(),
            "store": self.table.store_description(),
            "uptime_secs": self.table.uptime().as_secs(),
            "stale": self.table.stale().as_deref(),
            "counts": snap.counts(),
            "pid": std::process::id(),
        })
    }

    fn table_all(&self) -> Value {
        let snap = self.table.load();
        json!({ "version": snap.version(), "entities": snap.entities() })
    }

    fn table_kind(&self, kind: &str) -> Reply {
        let kind = parse_kind(kind)?;
        let snap = self.table.load();
        let entities: Vec<_> = snap.names(kind).iter().filter_map(|n| snap.get_by(kind, n)).collect();
        Ok(json!({ "version": snap.version(), "kind": kind, "entities": entities }))
    }

    fn table_entity(&self, kind: &str, raw: &str) -> Reply {
        let kind = parse_kind(kind)?;
        let name = percent_decode(raw);
        let normalized = kind.normalize_name(&name).map_err(|e| ApiError::bad(format!("{kind} name `{name}` {e}")))?;
        let snap = self.table.load();
        let entity =
            snap.get_by(kind, &normalized).ok_or_else(|| ApiError::not_found(format!("no {kind} `{normalized}`")))?;
        Ok(json!({ "version": snap.version(), "entity": entity }))
    }

    fn lookup(&self, query: &HashMap<String, String>) -> Reply {
        let snap = self.table.load();
        let version = snap.version();
        let backend = |name: &str| snap.backend(name).map(|b| json!(b));
        if let Some(host) = query.get("host") {
            let m = snap.site_for_host(host).ok_or_else(|| ApiError::not_found(format!("no site serves `{host}`")))?;
            let backends: Vec<_> = m
                .site
                .backends
                .iter()
                .map(|b| json!({"backend": backend(&b.backend), "port": b.port, "weight": b.weight}))
                .collect();
            return Ok(
                json!({ "version": version, "site": m.site.name, "alias": m.alias, "wildcard": m.wildcard, "protection": m.site.protection, "backends": backends }),
            );
        }
        if let Some(user) = query.get("mail_user") {
            let l = snap.mail_login(user).ok_or_else(|| ApiError::not_found(format!("no mail login `{user}`")))?;
            return Ok(json!({ "version": version, "mail_login": l.user, "backend": backend(&l.backend) }));
        }
        if let Some(rcpt) = query.get("recipient") {
            return match snap.recipient(rcpt) {
                Recipient::Routed(b) => Ok(json!({ "version": version, "recipient": rcpt, "backend": b })),
                Recipient::Unavailable => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backend missing")),
                Recipient::UnknownDomain => Err(ApiError::not_found(format!("no mail domain for `{rcpt}`"))),
            };
        }
        if let Some(user) = query.get("sftp_user") {
            let l = snap.sftp_login(user).ok_or_else(|| ApiError::not_found(format!("no sftp login `{user}`")))?;
            return Ok(json!({ "version": version, "sftp_login": l.user, "backend": backend(&l.backend) }));
        }
        if let Some(db) = query.get("database") {
            let d = snap.database(db).ok_or_else(|| ApiError::not_found(format!("no database `{db}`")))?;
            return Ok(json!({ "version": version, "database": d.name, "backend": backend(&d.server) }));
        }
        Err(ApiError::bad("give one of host, mail_user, recipient, sftp_user, database"))
    }

    async fn commit(&self, txn: Transaction, who: Who, around: Around) -> Reply {
        if around.dry_run {
            let d = self.table.dry_run(&txn)?;
            return Ok(json!({ "dry_run": true, "version": d.version, "changes": d.changes }));
        }
        // Hold the logins this transaction moves, found by a dry run, until
        // it is committed (or refused).
        let hold = match around.hold_secs {
            Some(secs) if !(1..=MAX_HOLD_SECS).contains(&secs) => {
                return Err(ApiError::bad(format!("hold: must be between 1 and {MAX_HOLD_SECS} seconds")));
            }
            Some(secs) => {
                let users = moved_users(&self.table.dry_run(&txn)?.changes);
                Some(self.sessions.hold(users, std::time::Duration::from_secs(secs)))
            }
            None => None,
        };
        let done = self.table.apply(txn, who).await;
        drop(hold);
        let done = done?;
        let mut answer = json!({ "version": done.version, "changes": done.changes });
        if around.kick {
            answer["kicked"] = json!(self.kick_moved(&done.changes));
        }
        Ok(answer)
    }

    /// Closes the sessions of users whose login this change set moved (or
    /// removed) that are still on another backend; returns how many.
    fn kick_moved(&self, changes: &[routing_table::Change]) -> usize {
        let mut kicked = 0;
        for c in changes {
            let (protocols, keep): (&[&str], _) = match (&c.kind, &c.after) {
                (Kind::SftpLogin, Some(routing_table::Entity::SftpLogin(l))) => (&["ssh"], Some(l.backend.to_string())),
                (Kind::SftpLogin, _) => (&["ssh"], None),
                (Kind::MailLogin, Some(routing_table::Entity::MailLogin(l))) => {
                    (&MAIL_PROTOCOLS, Some(l.backend.to_string()))
                }
                (Kind::MailLogin, _) => (&MAIL_PROTOCOLS, None),
                _ => continue,
            };
            for protocol in protocols {
                let n = self.sessions.kick(protocol, &c.name, keep.as_deref());
                if n > 0 {
                    tracing::info!(user = %c.name, protocol, to = ?keep, sessions = n, "kicked sessions after a move");
                }
                kicked += n;
            }
        }
        kicked
    }

    async fn history(&self, query: &HashMap<String, String>) -> Reply {
        let before = query.get("before").map(|v| number(v, "before")).transpose()?;
        let limit = query.get("limit").map(|v| number(v, "limit")).transpose()?.unwrap_or(50).min(MAX_HISTORY as u64);
        let entries = self.table.history(before, limit as usize).await?;
        Ok(json!({ "version": self.table.load().version(), "entries": entries }))
    }

    async fn diff(&self, query: &HashMap<String, String>) -> Reply {
        let from = number(query.get("from").ok_or_else(|| ApiError::bad("`from` is required"))?, "from")?;
        let to = match query.get("to") {
            Some(v) => number(v, "to")?,
            None => self.table.load().version(),
        };
        let changes = self.table.diff(from, to).await?;
        Ok(json!({ "from": from, "to": to, "changes": changes }))
    }
}

/// One line per request: changes at INFO (the audit trail of who tried
/// what), reads at DEBUG, refused peers at WARN. Bodies are not logged.
fn log_request(method: &Method, path: &str, peer: Peer, status: StatusCode, body: &Value) {
    let version = body["version"].as_u64();
    let error = body["error"]["message"].as_str();
    if status == StatusCode::FORBIDDEN {
        tracing::warn!(%method, path, uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "control request refused");
    } else if method == Method::GET {
        tracing::debug!(%method, path, uid = peer.uid, status = status.as_u16(), "control request");
    } else {
        tracing::info!(%method, path, uid = peer.uid, pid = ?peer.pid, status = status.as_u16(), version, error, "control request");
    }
}

/// The session protocols a mail login covers.
const MAIL_PROTOCOLS: [&str; 3] = ["imap", "pop3", "submission"];

/// Users whose mail or SFTP login a change set moves to another backend
/// (or removes).
fn moved_users(changes: &[routing_table::Change]) -> Vec<String> {
    use routing_table::Entity;
    let backend = |e: &Option<Entity>| match e {
        Some(Entity::MailLogin(l)) => Some(l.backend.to_string()),
        Some(Entity::SftpLogin(l)) => Some(l.backend.to_string()),
        _ => None,
    };
    changes
        .iter()
        .filter(|c| matches!(c.kind, Kind::MailLogin | Kind::SftpLogin) && backend(&c.before) != backend(&c.after))
        .map(|c| c.name.to_string())
        .collect()
}

fn move_op(kind: &str, action: &str, name: &str, body: &MoveBody) -> Result<Op, ApiError> {
    let name = percent_decode(name);
    let to = body.to.clone();
    match (kind, action) {
        ("sites", "move") => Ok(Op::MoveSite { site: name, to, from: body.from.clone() }),
        ("members", "move") => Ok(Op::MoveMember { member: name, to, databases_to: body.databases_to.clone() }),
        ("backends", "evacuate") => Ok(Op::EvacuateBackend { from: name, to }),
        _ => Err(ApiError::not_found(format!("no endpoint /v1/{kind}/{{name}}/{action}"))),
    }
}

fn parse_kind(raw: &str) -> Result<Kind, ApiError> {
    Kind::parse(raw).ok_or_else(|| {
        let kinds: Vec<_> = Kind::ALL.iter().map(|k| format!("{k}s")).collect();
        ApiError::not_found(format!("`{raw}` is not a kind; kinds are {}", kinds.join(", ")))
    })
}

fn number(raw: &str, what: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError {
        field: Some(what.into()),
        ..ApiError::bad(format!("`{what}` must be a version number, not `{raw}`"))
    })
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| matches!(v.as_str(), "" | "1" | "true" | "yes"))
}

/// Query parameters, percent-decoded. `+` stays a `+` (it is part of
/// logins such as `bob+lists@example.org`); clients encode spaces as `%20`.
fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let pairs = query.unwrap_or("").split('&').filter(|p| !p.is_empty());
    pairs.map(|p| p.split_once('=').unwrap_or((p, ""))).map(|(k, v)| (percent_decode(k), percent_decode(v))).collect()
}

fn percent_decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned()
}

/// Reads a JSON body of at most `max` bytes into `T`, naming the field of
/// any error.
async fn read_json<T: DeserializeOwned>(req: Request<Incoming>, max: usize) -> Result<T, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {max} bytes"));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => return Err(ApiError::bad(format!("could not read the request body: {e}"))),
    };
    decode_json(&body)
}

/// Decodes a JSON request body; errors carry the path of the bad field.
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError { field: (path != ".").then_some(path), ..ApiError::bad(format!("invalid JSON: {}", e.inner())) }
    })?;
    de.end().map_err(|e| ApiError::bad(format!("invalid JSON: {e}")))?;
    Ok(value)
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_name_the_field() {
        let e = decode_json::<Transaction>(br#"{"ops":[{"op":"move_site","site":"x","too":"y"}]}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("unknown field `too`"), "{}", e.message);
        assert_eq!(e.field.as_deref(), Some("ops[0]"));
        let e = decode_json::<Transaction>(br#"{"ops":[], "if_version": "x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("if_version"));
        let e = decode_json::<Transaction>(br#"{"ops":[]} trailing"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{}", e.message);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("alice%40alice.test"), "alice@alice.test");
        assert_eq!(percent_decode("bob+x%2By"), "bob+x+y");
        let q = parse_query(Some("host=a.test&flag&x=%20"));
        assert_eq!(q["host"], "a.test");
        assert_eq!(q["flag"], "");
        assert_eq!(q["x"], " ");
    }
}
