//! The `edge` process: opens the store and the table, seeds a first start,
//! binds every listener, and serves until told to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus::{IntGaugeVec, Opts, Registry};
use routing_table::{
    ApplyError, EtcdStore, OpenError, SqliteStore, Store, StoreError, Table, TableMetrics, Transaction, Who,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, StoreConfig};
use crate::control::{self, Api, ControlListener};
use crate::sessions::Sessions;

/// Why Edge could not start. Each names what it was working on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("seed file {path}: {message}")]
    Seed { path: PathBuf, message: String },
    #[error(transparent)]
    Control(#[from] control::BindError),
    #[error("admin listener {addr}: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Dns(#[from] dnsd::BindError),
    #[error(transparent)]
    Ssh(#[from] crate::ssh::BindError),
    #[error(transparent)]
    Mail(#[from] crate::mail::BindError),
    #[error(transparent)]
    Http(#[from] crate::http::StartError),
    #[error("{0}")]
    Demo(std::io::Error),
}

/// Runs `bind` again while its error says the address (or the control
/// socket) is in use, for up to 30 s, when `upgrade`: the old process
/// releases its listeners when it stops. Otherwise binds once.
async fn retry_in_use<T, E, F, Fut>(upgrade: bool, mut bind: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match bind().await {
            Err(e) if upgrade && in_use(&e) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            done => return done,
        }
    }
}

/// Whether an error (or one of its sources) is an address in use.
fn in_use(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
            || e.downcast_ref::<control::BindError>().is_some_and(|b| matches!(b, control::BindError::InUse { .. }))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// A started Edge: table open, listeners bound, nothing served yet.
pub struct Edge {
    table: Table,
    registry: Registry,
    control: ControlListener,
    admin: TcpListener,
    dns: Option<dnsd::Dnsd>,
    ssh: Option<crate::ssh::Ssh>,
    mail: Option<crate::mail::Mail>,
    /// Pingora, already running on its own thread; stopped through
    /// `http_stop`.
    http: Option<crate::http::Http>,
    http_stop: watch::Sender<bool>,
    sessions: Arc<Sessions>,
}

impl Edge {
    /// Opens the store and binds every listener of `config`.
    pub async fn start(config: &Config) -> Result<Edge, StartError> {
        Self::start_upgrading(config, false).await
    }

    /// As [`Edge::start`]; with `upgrade`, takes the HTTP listeners over
    /// from the edge running with the same configuration (Pingora's
    /// listener hand-off: that edge sends them when it gets SIGQUIT), then
    /// binds the other listeners as that edge releases them (retrying for
    /// up to 30 s). docs/operations.md, "Upgrading without dropping
    /// requests".
    pub async fn start_upgrading(config: &Config, upgrade: bool) -> Result<Edge, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
        let registry = Registry::new();
        let info = IntGaugeVec::new(Opts::new("edge_build_info", "Edge build information."), &["version"])?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(info))?;
        let store = open_store(&config.store)?;
        // A shared store is read whole here: a node starts serving at the
        // cluster's current version, never an older one.
        let table = Table::open(store, TableMetrics::register(&registry)?)?;
        if table.load().version() == 0 {
            if let Some(seed) = &config.seed {
                seed_table(&table, seed).await?;
            }
        }
        let (http_stop, http_stopping) = watch::channel(false);
        let start_http = |registry: &Registry| -> Result<Option<crate::http::Http>, StartError> {
            let Some(settings) = &config.http else { return Ok(None) };
            let mut settings = settings.clone();
            if let (Some(acme), Some(dns)) = (settings.acme.as_mut(), &config.dns) {
                // DNS-01 for the names in dnsd's zone.
                acme.dns_zone = Some(dns.zone.origin.to_ascii().trim_end_matches('.').to_string());
            }
            let metrics = crate::http::HttpMetrics::register(registry)?;
            let http = crate::http::Http::start(
                settings,
                &config.data_dir,
                table.clone(),
                metrics,
                registry,
                http_stopping.clone(),
                upgrade,
            )?;
            Ok(Some(http))
        };
        // An upgrade takes the HTTP listeners over from the running edge
        // first (it hands them over on SIGQUIT), then binds the others as
        // the old process releases them.
        let mut http = if upgrade { start_http(&registry)? } else { None };
        let control = retry_in_use(upgrade, || ControlListener::bind(&config.control)).await?;
        let admin = retry_in_use(upgrade, || TcpListener::bind(config.admin_listen))
            .await
            .map_err(|source| StartError::Admin { addr: config.admin_listen, source })?;
        let dns = match &config.dns {
            Some(settings) => {
                let metrics = dnsd::DnsMetrics::register(&registry)?;
                let bind = || dnsd::Dnsd::bind(settings.clone(), table.clone(), metrics.clone());
                Some(retry_in_use(upgrade, bind).await?)
            }
            None => None,
        };
        let sessions = Sessions::new();
        let ssh = match &config.ssh {
            Some(settings) => {
                let metrics = crate::ssh::SshMetrics::register(&registry)?;
                let bind = || {
                    let (table, sessions, metrics) = (table.clone(), sessions.clone(), metrics.clone());
                    crate::ssh::Ssh::bind(settings.clone(), &config.data_dir, table, sessions, metrics)
                };
                Some(retry_in_use(upgrade, bind).await?)
            }
            None => None,
        };
        let mail = match &config.mail {
            Some(settings) => {
                let metrics = crate::mail::MailMetrics::register(&registry)?;
                let bind = || {
                    let (table, sessions, metrics) = (table.clone(), sessions.clone(), metrics.clone());
                    crate::mail::Mail::bind(settings.clone(), &config.data_dir, table, sessions, metrics)
                };
                Some(retry_in_use(upgrade, bind).await?)
            }
            None => None,
        };
        retry_in_use(upgrade, || crate::demo::start(&config.demo, http_stopping.clone()))
            .await
            .map_err(StartError::Demo)?;
        if !upgrade {
            http = start_http(&registry)?;
        }
        tracing::info!(
            version = table.load().version(),
            store = table.store_description(),
            control = %control.path().display(),
            admin = %config.admin_listen,
            dns = ?dns.as_ref().map(|d| d.local_addrs()),
            ssh = ?ssh.as_ref().map(|s| s.local_addrs()),
            mail = ?mail.as_ref().map(|m| m.local_addrs()),
            http = ?http.as_ref().map(|h| h.local_addrs()),
            "edge started"
        );
        Ok(Edge { table, registry, control, admin, dns, ssh, mail, http, http_stop, sessions })
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Where dnsd answers (UDP and TCP), when it is configured.
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        self.dns.as_ref().map_or(&[], |d| d.local_addrs())
    }

    /// Where the SSH forwarder listens, when it is configured.
    pub fn ssh_addrs(&self) -> &[SocketAddr] {
        self.ssh.as_ref().map_or(&[], |s| s.local_addrs())
    }

    /// Where the HTTP proxy listens.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        self.http.as_ref().map_or(&[], |h| h.local_addrs())
    }

    /// Where the HTTPS listeners are.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        self.http.as_ref().map_or(&[], |h| h.tls_addrs())
    }

    /// Where the mail forwarders listen: `(protocol, implicit TLS, address)`.
    pub fn mail_addrs(&self) -> Vec<(&'static str, bool, SocketAddr)> {
        self.mail.as_ref().map_or_else(Vec::new, |m| m.local_addrs())
    }

    pub fn control_path(&self) -> &Path {
        self.control.path()
    }

    /// Serves until `shutdown` turns true; `reload` receives new configs
    /// (SIGHUP) and applies what can change live.
    pub async fn serve(self, shutdown: watch::Receiver<bool>, mut reload: watch::Receiver<Option<Config>>) {
        // Every listener is bound: tell systemd (Type=notify), if it asked.
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        let access = self.control.access_handle();
        let cache = self.http.as_ref().and_then(|h| h.cache().cloned());
        let certs = self.http.as_ref().and_then(|h| h.certs().cloned());
        let acme = self.http.as_ref().and_then(|h| h.acme().cloned());
        let api = Arc::new(Api::new(self.table.clone(), self.sessions.clone()).with_http(cache, certs, acme));
        let control = tokio::spawn(self.control.serve(api, shutdown.clone()));
        let admin = tokio::spawn(crate::admin::serve(self.admin, self.registry, shutdown.clone()));
        let dns = self.dns.map(|d| tokio::spawn(d.serve(shutdown.clone())));
        let ssh = self.ssh.map(|s| tokio::spawn(s.serve(shutdown.clone())));
        let mail_tls = self.mail.as_ref().map(|m| m.tls());
        let https_certs = self.http.as_ref().and_then(|h| h.certs().cloned());
        let mail = self.mail.map(|m| tokio::spawn(m.serve(shutdown.clone())));
        let reloader = tokio::spawn(async move {
            while reload.changed().await.is_ok() {
                let next = reload.borrow_and_update().clone();
                if let Some(config) = next {
                    notify_systemd(&[sd_notify::NotifyState::Reloading]);
                    access.store(Arc::new(config.control.access.clone()));
                    tracing::info!(path = %config.path.display(), "configuration reloaded: control allow-list");
                    if let (Some(tls), Some(settings)) = (&mail_tls, &config.mail) {
                        match tls.reload(settings) {
                            Ok(()) => tracing::info!("configuration reloaded: mail certificate"),
                            Err(e) => {
                                tracing::error!(error = %e, "SIGHUP: mail certificate not reloaded; the old one stays")
                            }
                        }
                    }
                    if let Some(certs) = &https_certs {
                        match certs.refresh() {
                            Ok(n) => tracing::info!(changed = n, "configuration reloaded: https certificates"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: https certificates not re-read"),
                        }
                    }
                    notify_systemd(&[sd_notify::NotifyState::Ready]);
                }
            }
        });
        let mut stopping = shutdown.clone();
        crate::signals::stopped(&mut stopping).await;
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        let _ = self.http_stop.send(true);
        if let Some(http) = self.http {
            http.stopped().await;
        }
        let _ = control.await;
        let _ = admin.await;
        if let Some(dns) = dns {
            let _ = dns.await;
        }
        if let Some(ssh) = ssh {
            let _ = ssh.await;
        }
        if let Some(mail) = mail {
            let _ = mail.await;
        }
        reloader.abort();
        tracing::info!(version = self.table.load().version(), "edge stopped");
    }
}

/// Sends a state to systemd when it runs Edge with `Type=notify`
/// (`NOTIFY_SOCKET` set); does nothing otherwise.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }
}

/// Opens the store `config` names.
pub fn open_store(config: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite { path } => Box::new(SqliteStore::open(path)?),
        StoreConfig::Etcd(etcd) => Box::new(EtcdStore::open(etcd)?),
    })
}

/// `edge migrate --to KIND`: copies the table from the other store of the
/// configuration into the empty store `to`; the source is left as it is.
/// Returns a line for the admin.
pub fn migrate(config: &Config, to: &str) -> Result<String, String> {
    let sqlite = StoreConfig::Sqlite { path: config.sqlite_path.clone() };
    let etcd = || {
        config.etcd.clone().map(StoreConfig::Etcd).ok_or("the configuration has no [store.etcd] section".to_string())
    };
    let (from, into) = match to {
        "etcd" => (sqlite, etcd()?),
        "sqlite" => (etcd()?, sqlite),
        other => return Err(format!("--to {other}: expected etcd or sqlite")),
    };
    let mut source = open_store(&from).map_err(|e| e.to_string())?;
    let table = source.load().map_err(|e| e.to_string())?;
    if table.version == 0 {
        return Err(format!("{} is empty: nothing to copy", source.describe()));
    }
    routing_table::transaction::build(table.version, table.entities.clone())
        .map_err(|e| format!("{} at version {}: {e}", source.describe(), table.version))?;
    let mut dest = open_store(&into).map_err(|e| e.to_string())?;
    let comment = format!("copied from {} at version {}", source.describe(), table.version);
    let version = dest.import(&table, &Who::internal("migrate"), &comment).map_err(|e| e.to_string())?;
    Ok(format!(
        "copied {} entities from {} (version {}) into {} (version {version}); the source is unchanged",
        table.entities.len(),
        source.describe(),
        table.version,
        dest.describe()
    ))
}

/// Applies the seed transaction file to an empty table.
async fn seed_table(table: &Table, path: &Path) -> Result<(), StartError> {
    let txn = read_transaction(path).map_err(|message| StartError::Seed { path: path.into(), message })?;
    let done = table
        .apply(txn, Who::internal("seed"))
        .await
        .map_err(|e: ApplyError| StartError::Seed { path: path.into(), message: e.to_string() })?;
    tracing::info!(path = %path.display(), version = done.version, changed = done.changes.len(), "seeded an empty table");
    Ok(())
}

/// Reads a transaction file, with errors that name the field.
pub fn read_transaction(path: &Path) -> Result<Transaction, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    crate::control::api::decode_json(&bytes).map_err(|e| e.to_string())
}

/// Checks `config` the way a start would, without touching the store or
/// binding anything: the file, and the seed file against an empty table.
pub fn check(config: &Config) -> Result<(), String> {
    if let Some(seed) = &config.seed {
        let txn = read_transaction(seed).map_err(|e| format!("seed file {}: {e}", seed.display()))?;
        routing_table::transaction::apply(&routing_table::Snapshot::empty(), &txn)
            .map_err(|e| format!("seed file {}: {e}", seed.display()))?;
    }
    Ok(())
}
