//! `edgectl`, the admin CLI: parses a command, calls the control API, and
//! prints the answer for people (or as JSON with `--json`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;
use crate::control::client::{Answer, Client};

#[derive(Parser)]
#[command(name = "edgectl", version, about = "Change and inspect Edge's routing table")]
pub struct Cli {
    /// Control socket (default: from --config, else var/control.sock).
    #[arg(long, global = true, env = "EDGE_SOCKET")]
    socket: Option<PathBuf>,
    /// Edge configuration, to find the socket.
    #[arg(long, global = true, default_value = "config/edge.toml", env = "EDGE_CONFIG")]
    config: PathBuf,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, store, uptime and entity counts.
    Status,
    /// Add, show, list, remove or move sites.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Move members.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Move one mailbox login (IMAP, POP3, submission).
    #[command(subcommand)]
    Mailbox(MailboxCmd),
    /// Add, list, drain or evacuate backends.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// The internal DNS zone.
    #[command(subcommand)]
    Dns(DnsCmd),
    /// HTTPS certificates: `cert list`, `cert show NAME`, `cert renew SITE` (ACME).
    #[command(subcommand)]
    Cert(CertCmd),
    /// The HTTP cache: `cache stats`, `cache purge --site NAME`, `cache purge URL`.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Live SSH and mail sessions (all, or one user's) and the backend each is on.
    Sessions { user: Option<String> },
    /// Apply a transaction file (JSON: {"ops": [...]}).
    Apply {
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Show entities: `get sites`, `get site alice-blog`.
    Get { kind: String, name: Option<String> },
    /// Where a name routes: `lookup host blog.alice.test`.
    Lookup {
        #[arg(value_parser = ["host", "mail_user", "recipient", "sftp_user", "database"])]
        what: String,
        value: String,
    },
    /// Recent versions, or one version in full.
    History {
        version: Option<u64>,
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[arg(long)]
        before: Option<u64>,
    },
    /// Net change between two versions (TO defaults to the current one).
    Diff { from: u64, to: Option<u64> },
    /// Make the table what it was at VERSION (as a new version).
    Rollback {
        version: u64,
        #[arg(long)]
        if_version: Option<u64>,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Add a site; fails if the name exists.
    Add {
        name: String,
        /// Host name, exact or `*.example.org` (repeat).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Backend as NAME[:PORT][@WEIGHT] (repeat).
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
        #[arg(long)]
        member: Option<String>,
        /// Name redirected to the first host (repeat).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    Show {
        name: String,
    },
    List,
    Rm {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Send the site's traffic to another backend.
    Move {
        name: String,
        #[arg(long)]
        to: String,
        /// Move only this backend's share.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Move all of a member's sites, logins, domains and databases at once.
    Move {
        name: String,
        #[arg(long)]
        to: String,
        /// Put databases on this server instead of --to.
        #[arg(long)]
        databases_to: Option<String>,
        #[command(flatten)]
        around: MoveFlags,
    },
}

#[derive(Subcommand)]
enum MailboxCmd {
    /// Send a mailbox login's new sessions to another backend.
    Move {
        user: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        around: MoveFlags,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Every certificate in the directory, with names, validity and ACME state.
    List,
    /// One certificate, by file name or by site (its ACME certificate).
    Show { name: String },
    /// Order a site's ACME certificate now.
    Renew { site: String },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Entries, bytes, capacity and evictions.
    Stats,
    /// Drop one URL (every variant) or every response of a site.
    Purge {
        /// `http://host/path?query` or `https://…` (the scheme does not matter).
        #[arg(required_unless_present = "site", conflicts_with = "site")]
        url: Option<String>,
        #[arg(long)]
        site: Option<String>,
    },
}

#[derive(Subcommand)]
enum DnsCmd {
    /// Import a BIND zone file in one transaction: `<db>.mysql` names become
    /// databases, other names extra records (see docs/dns.md).
    Import {
        file: PathBuf,
        /// Zone origin (default: `[dns] zone` from --config, else mayfirst.local).
        #[arg(long)]
        zone: Option<String>,
        /// Keep the file's TTLs instead of the `[dns] ttl` default.
        #[arg(long)]
        keep_ttl: bool,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    Add {
        name: String,
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    List,
    /// Set up, draining or down.
    State {
        name: String,
        #[arg(value_parser = ["up", "draining", "down"])]
        state: String,
    },
    /// Move every route of this backend to another.
    Evacuate {
        name: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        around: MoveFlags,
    },
}

/// What every move of logins takes besides its target.
#[derive(Args)]
struct MoveFlags {
    #[arg(long)]
    dry_run: bool,
    /// Then close the moved users' SSH and mail sessions still on the old
    /// backend, so clients reconnect to the new one.
    #[arg(long)]
    kick: bool,
    /// Hold the moved users' new logins (up to SECONDS) until the move is
    /// committed.
    #[arg(long, value_name = "SECONDS")]
    hold: Option<u64>,
}

impl MoveFlags {
    /// `body` with `dry_run`, `kick` and `hold_secs` added.
    fn add_to(&self, mut body: serde_json::Value) -> serde_json::Value {
        body["dry_run"] = json!(self.dry_run);
        body["kick"] = json!(self.kick);
        body["hold_secs"] = json!(self.hold);
        body
    }
}

/// Runs a parsed command; `Err` carries the message for stderr.
pub async fn run(cli: Cli) -> Result<(), String> {
    let client = Client::new(socket_path(&cli));
    let json_out = cli.json;
    let (answer, style) = call(&client, &cli.config, cli.command).await?;
    if let Some(message) = answer.error_message() {
        return Err(message);
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer.body).unwrap_or_default());
    } else {
        print!("{}", render(style, &answer.body));
    }
    Ok(())
}

fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    match Config::load(&cli.config) {
        Ok(c) => c.control.socket,
        Err(_) => PathBuf::from("var/control.sock"),
    }
}

#[derive(Clone)]
enum Style {
    /// A zone import: its summary, then the version line (not every change).
    Import(String),
    Status,
    Changes,
    Entity,
    Entities,
    History,
    Entry,
    Sessions,
    Raw,
}

async fn call(client: &Client, config: &Path, command: Command) -> Result<(Answer, Style), String> {
    let e = |e: crate::control::client::ClientError| e.to_string();
    let txn = |dry_run: bool| {
        if dry_run {
            "/v1/transactions/dry-run"
        } else {
            "/v1/transactions"
        }
    };
    Ok(match command {
        Command::Status => (client.get("/v1/status").await.map_err(e)?, Style::Status),
        Command::Site(SiteCmd::Add { name, hosts, backends, member, aliases, dry_run }) => {
            let backends = backends.iter().map(|b| parse_backend(b)).collect::<Result<Vec<_>, _>>()?;
            let mut site = json!({ "kind": "site", "name": name, "hosts": hosts, "backends": backends });
            if let Some(m) = member {
                site["member"] = json!(m);
            }
            if !aliases.is_empty() {
                site["aliases"] = json!(aliases);
            }
            let body = json!({ "ops": [{ "op": "add", "entity": site }] });
            (client.post(txn(dry_run), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Site(SiteCmd::Show { name }) => {
            (client.get(&format!("/v1/table/sites/{}", enc(&name))).await.map_err(e)?, Style::Entity)
        }
        Command::Site(SiteCmd::List) => (client.get("/v1/table/sites").await.map_err(e)?, Style::Entities),
        Command::Site(SiteCmd::Rm { name, dry_run }) => {
            let body = json!({ "ops": [{ "op": "delete", "kind": "site", "name": name }] });
            (client.post(txn(dry_run), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Site(SiteCmd::Move { name, to, from, dry_run }) => {
            let body = json!({ "to": to, "from": from, "dry_run": dry_run });
            (client.post(&format!("/v1/sites/{}/move", enc(&name)), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Member(MemberCmd::Move { name, to, databases_to, around }) => {
            let body = around.add_to(json!({ "to": to, "databases_to": databases_to }));
            (client.post(&format!("/v1/members/{}/move", enc(&name)), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Mailbox(MailboxCmd::Move { user, to, around }) => {
            let body = around.add_to(json!({ "to": to }));
            (client.post(&format!("/v1/mailboxes/{}/move", enc(&user)), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Backend(BackendCmd::Add { name, addresses, dry_run }) => {
            let body = json!({ "ops": [{ "op": "add", "entity": { "kind": "backend", "name": name, "addresses": addresses } }] });
            (client.post(txn(dry_run), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Cert(CertCmd::List) => (client.get("/v1/certs").await.map_err(e)?, Style::Raw),
        Command::Cert(CertCmd::Show { name }) => {
            (client.get(&format!("/v1/certs/{}", enc(&name))).await.map_err(e)?, Style::Raw)
        }
        Command::Cert(CertCmd::Renew { site }) => {
            (client.post(&format!("/v1/certs/{}/renew", enc(&site)), &json!({})).await.map_err(e)?, Style::Raw)
        }
        Command::Cache(CacheCmd::Stats) => (client.get("/v1/cache").await.map_err(e)?, Style::Raw),
        Command::Cache(CacheCmd::Purge { url, site }) => {
            let body = match (url, site) {
                (_, Some(site)) => json!({ "site": site }),
                (url, None) => json!({ "url": url }),
            };
            (client.post("/v1/cache/purge", &body).await.map_err(e)?, Style::Raw)
        }
        Command::Sessions { user } => {
            let path = match user {
                Some(u) => format!("/v1/sessions?user={}", enc(&u)),
                None => "/v1/sessions".to_string(),
            };
            (client.get(&path).await.map_err(e)?, Style::Sessions)
        }
        Command::Backend(BackendCmd::List) => (client.get("/v1/table/backends").await.map_err(e)?, Style::Entities),
        Command::Backend(BackendCmd::State { name, state }) => {
            let body = json!({ "ops": [{ "op": "set_backend_state", "backend": name, "state": state }] });
            (client.post("/v1/transactions", &body).await.map_err(e)?, Style::Changes)
        }
        Command::Backend(BackendCmd::Evacuate { name, to, around }) => {
            let body = around.add_to(json!({ "to": to }));
            (client.post(&format!("/v1/backends/{}/evacuate", enc(&name)), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Dns(DnsCmd::Import { file, zone, keep_ttl, dry_run }) => {
            let zone = zone.unwrap_or_else(|| match Config::load(config).ok().and_then(|c| c.dns) {
                Some(dns) => dns.zone.origin.to_ascii(),
                None => "mayfirst.local".into(),
            });
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let backends = client.get("/v1/table/backends").await.map_err(e)?;
            if let Some(message) = backends.error_message() {
                return Err(message);
            }
            let known: Vec<dnsd::import::KnownBackend> = backends.body["entities"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| dnsd::import::KnownBackend {
                    name: b["name"].as_str().unwrap_or_default().to_string(),
                    addresses: b["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str()?.parse().ok())
                        .collect(),
                })
                .collect();
            let (body, summary) = dnsd::import::zone_file(&text, &zone, &known, keep_ttl)
                .map_err(|m| format!("{}: {m}", file.display()))?;
            (client.post(txn(dry_run), &body).await.map_err(e)?, Style::Import(summary.to_string()))
        }
        Command::Apply { file, dry_run } => {
            let body = read_file_json(&file)?;
            (client.post(txn(dry_run), &body).await.map_err(e)?, Style::Changes)
        }
        Command::Get { kind, name: None } => {
            (client.get(&format!("/v1/table/{}", enc(&kind))).await.map_err(e)?, Style::Entities)
        }
        Command::Get { kind, name: Some(n) } => {
            (client.get(&format!("/v1/table/{}/{}", enc(&kind), enc(&n))).await.map_err(e)?, Style::Entity)
        }
        Command::Lookup { what, value } => {
            (client.get(&format!("/v1/lookup?{what}={}", enc(&value))).await.map_err(e)?, Style::Raw)
        }
        Command::History { version: Some(v), .. } => {
            (client.get(&format!("/v1/history/{v}")).await.map_err(e)?, Style::Entry)
        }
        Command::History { version: None, limit, before } => {
            let before = before.map(|b| format!("&before={b}")).unwrap_or_default();
            (client.get(&format!("/v1/history?limit={limit}{before}")).await.map_err(e)?, Style::History)
        }
        Command::Diff { from, to } => {
            let to = to.map(|t| format!("&to={t}")).unwrap_or_default();
            (client.get(&format!("/v1/diff?from={from}{to}")).await.map_err(e)?, Style::Changes)
        }
        Command::Rollback { version, if_version } => {
            let body = json!({ "to": version, "if_version": if_version });
            (client.post("/v1/rollback", &body).await.map_err(e)?, Style::Changes)
        }
    })
}

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn read_file_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// `mosh12`, `mosh12:8080`, `mosh12:8080@3` → a site backend object.
fn parse_backend(spec: &str) -> Result<Value, String> {
    let (rest, weight) = match spec.split_once('@') {
        Some((r, w)) => {
            (r, Some(w.parse::<u16>().map_err(|_| format!("--backend {spec}: weight `{w}` is not a number"))?))
        }
        None => (spec, None),
    };
    let (name, port) = match rest.split_once(':') {
        Some((n, p)) => {
            (n, Some(p.parse::<u16>().map_err(|_| format!("--backend {spec}: port `{p}` is not a number"))?))
        }
        None => (rest, None),
    };
    let mut v = json!({ "backend": name });
    if let Some(p) = port {
        v["port"] = json!(p);
    }
    if let Some(w) = weight {
        v["weight"] = json!(w);
    }
    Ok(v)
}

fn render(style: Style, body: &Value) -> String {
    match style {
        Style::Status => render_status(body),
        Style::Import(summary) => {
            let changes = render_changes(body);
            format!("imported: {summary}\n{}\n", changes.lines().next().unwrap_or_default())
        }
        Style::Changes => render_changes(body),
        Style::Sessions => render_sessions(body),
        Style::Entity => format!("version {}\n{}\n", body["version"], pretty(&body["entity"])),
        Style::Entities => render_entities(body),
        Style::History => render_history(body),
        Style::Entry => {
            let mut out = render_history_line(body);
            out.push_str(&render_changes(&json!({ "changes": body["changes"] })));
            out
        }
        Style::Raw => format!("{}\n", pretty(body)),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn render_status(b: &Value) -> String {
    let c = &b["counts"];
    let secs = b["uptime_secs"].as_u64().unwrap_or(0);
    format!(
        "version {}\nstore   {}\nuptime  {}h{:02}m{:02}s (pid {})\nroutes  {} backends, {} members, {} sites ({} hosts), {} mail logins, {} mail domains, {} sftp logins, {} databases, {} dns names\n",
        b["version"], b["store"].as_str().unwrap_or("?"), secs / 3600, secs / 60 % 60, secs % 60, b["pid"],
        c["backends"], c["members"], c["sites"], c["hosts"], c["mail_logins"], c["mail_domains"], c["sftp_logins"], c["databases"], c["dns_names"],
    ) + &render_stale(&b["stale"])
}

/// The STALE line of a node that cannot read its shared store.
fn render_stale(stale: &Value) -> String {
    if stale.is_null() {
        return String::new();
    }
    let since_ms = stale["since_ms"].as_u64().unwrap_or(0);
    let now_ms = routing_table::store::now_ms();
    format!(
        "STALE   for {} s: cannot read the store ({}); serving the version above, refusing changes\n",
        now_ms.saturating_sub(since_ms) / 1000,
        stale["error"].as_str().unwrap_or("?")
    )
}

fn render_sessions(b: &Value) -> String {
    let sessions = b["sessions"].as_array().cloned().unwrap_or_default();
    if sessions.is_empty() {
        return "no live sessions\n".into();
    }
    let now_ms = routing_table::store::now_ms();
    let mut out = String::from("ID    PROTO  USER                 BACKEND          CLIENT                  AGE\n");
    for s in &sessions {
        let age = now_ms.saturating_sub(s["started_ms"].as_u64().unwrap_or(now_ms)) / 1000;
        let _ = writeln!(
            out,
            "{:<5} {:<6} {:<20} {:<16} {:<23} {}s",
            s["id"].as_u64().unwrap_or(0),
            s["protocol"].as_str().unwrap_or("?"),
            s["user"].as_str().unwrap_or("?"),
            s["backend"].as_str().unwrap_or("?"),
            s["client"].as_str().unwrap_or("?"),
            age
        );
    }
    out
}

fn render_changes(b: &Value) -> String {
    let changes = b["changes"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    if b["dry_run"].as_bool() == Some(true) {
        let _ = writeln!(
            out,
            "dry run: would make version {} ({} change(s)); nothing applied",
            b["version"],
            changes.len()
        );
    } else if let (Some(v), true) = (b["version"].as_u64(), changes.is_empty() && b.get("from").is_none()) {
        let _ = writeln!(out, "no change: the table stays at version {v}");
    } else if let Some(v) = b["version"].as_u64() {
        let _ = writeln!(out, "version {v}: {} change(s)", changes.len());
        if let Some(k) = b["kicked"].as_u64() {
            let _ = writeln!(out, "kicked {k} session(s) still on the old backend");
        }
    } else if let (Some(from), Some(to)) = (b["from"].as_u64(), b["to"].as_u64()) {
        let _ = writeln!(out, "from version {from} to {to}: {} change(s)", changes.len());
    }
    for c in &changes {
        let (sign, before, after) = match (&c["before"], &c["after"]) {
            (Value::Null, a) => ('+', Value::Null, a.clone()),
            (b, Value::Null) => ('-', b.clone(), Value::Null),
            (b, a) => ('~', b.clone(), a.clone()),
        };
        let _ = writeln!(out, "  {sign} {} {}", c["kind"].as_str().unwrap_or("?"), c["name"].as_str().unwrap_or("?"));
        for (key, old, new) in field_diff(&before, &after) {
            let _ = writeln!(out, "      {key}: {old} -> {new}");
        }
    }
    out
}

/// Top-level fields that differ, as compact JSON.
fn field_diff(before: &Value, after: &Value) -> Vec<(String, String, String)> {
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).filter(|k| *k != "kind").collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&Value>| v.map_or("(none)".to_string(), |v| v.to_string());
    keys.into_iter().filter(|k| b.get(*k) != a.get(*k)).map(|k| (k.clone(), show(b.get(k)), show(a.get(k)))).collect()
}

fn render_entities(b: &Value) -> String {
    let items = b["entities"].as_array().cloned().unwrap_or_default();
    let mut out = format!("version {}: {} {}(s)\n", b["version"], items.len(), b["kind"].as_str().unwrap_or("entity"));
    for e in &items {
        let mut rest = e.clone();
        if let Some(o) = rest.as_object_mut() {
            o.remove("kind");
            o.remove("name");
        }
        let name = e["name"].as_str().or(e["user"].as_str()).or(e["domain"].as_str()).unwrap_or("?");
        let _ = writeln!(out, "  {name}  {rest}");
    }
    out
}

fn render_history(b: &Value) -> String {
    let entries = b["entries"].as_array().cloned().unwrap_or_default();
    let mut out = format!("current version {}\n", b["version"]);
    for e in &entries {
        out.push_str(&render_history_line(e));
    }
    out
}

fn render_history_line(e: &Value) -> String {
    let who = &e["who"];
    let uid = who["uid"].as_u64().map(|u| format!(" uid {u}")).unwrap_or_default();
    let ops: Vec<String> =
        e["txn"]["ops"].as_array().map(|ops| ops.iter().take(3).map(describe_op).collect()).unwrap_or_default();
    let more = e["txn"]["ops"].as_array().map_or(0, |o| o.len().saturating_sub(3));
    let more = if more > 0 { format!(" (+{more} more)") } else { String::new() };
    let comment = e["comment"].as_str().map(|c| format!(" \"{c}\"")).unwrap_or_default();
    format!(
        "  v{:<6} {} {}{uid}  {} change(s)  {}{more}{comment}\n",
        e["version"],
        format_time(e["time_ms"].as_u64().unwrap_or(0)),
        who["origin"].as_str().unwrap_or("?"),
        e["changed"],
        ops.join("; ")
    )
}

fn describe_op(op: &Value) -> String {
    let kind = op["op"].as_str().unwrap_or("?");
    match kind {
        "put" | "add" => {
            format!("{kind} {} {}", op["entity"]["kind"].as_str().unwrap_or("?"), entity_name(&op["entity"]))
        }
        "delete" => format!("delete {} {}", op["kind"].as_str().unwrap_or("?"), op["name"].as_str().unwrap_or("?")),
        "move_site" => {
            format!("move site {} -> {}", op["site"].as_str().unwrap_or("?"), op["to"].as_str().unwrap_or("?"))
        }
        "move_member" => {
            format!("move member {} -> {}", op["member"].as_str().unwrap_or("?"), op["to"].as_str().unwrap_or("?"))
        }
        "evacuate_backend" => {
            format!("evacuate {} -> {}", op["from"].as_str().unwrap_or("?"), op["to"].as_str().unwrap_or("?"))
        }
        "set_backend_state" => {
            format!("backend {} {}", op["backend"].as_str().unwrap_or("?"), op["state"].as_str().unwrap_or("?"))
        }
        other => other.to_string(),
    }
}

fn entity_name(e: &Value) -> &str {
    e["name"].as_str().or(e["user"].as_str()).or(e["domain"].as_str()).unwrap_or("?")
}

/// `YYYY-MM-DD HH:MM:SS` UTC from Unix milliseconds (civil-from-days).
fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs() {
        assert_eq!(parse_backend("mosh12").unwrap(), json!({"backend": "mosh12"}));
        assert_eq!(parse_backend("mosh12:8080@3").unwrap(), json!({"backend": "mosh12", "port": 8080, "weight": 3}));
        assert!(parse_backend("mosh12:http").is_err());
    }

    #[test]
    fn path_segments_keep_unreserved_characters() {
        assert_eq!(enc("alice-blog.v2_x~"), "alice-blog.v2_x~");
        assert_eq!(enc("bob+lists@x y/z"), "bob%2Blists%40x%20y%2Fz");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_322_096_000), "2026-11-22 04:34:56");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
    }
}
