//! Automatic certificates (issue #9): the edge orders and renews its
//! sites' certificates from an ACME CA (instant-acme), answering the
//! challenges itself ([`challenge`]: HTTP-01 on its HTTP listener,
//! TLS-ALPN-01 on its TLS listener, DNS-01 through dnsd for wildcard
//! names), and writes each certificate into the certificate directory,
//! where the resolver serves it on the next handshake ([`super::certs`]).
//!
//! A site opts in with `policy.tls.acme = true` (or every site, with
//! `[http.acme] all_sites`); its certificate `acme-SITE.pem` covers its
//! hosts (a wildcard host only when dnsd's zone holds it). A table commit
//! wakes the manager, so a new site is ordered at once. One order at a
//! time, for hosts in the table only; renewal at `renew_fraction` of the
//! lifetime, or earlier when the CA's renewal information (ARI, RFC 9773)
//! says so; a failed order is retried with exponential backoff while the
//! old certificate keeps serving; at most `max_orders_per_hour` orders.

pub mod challenge;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use routing_table::{Site, Table, Transaction, Who};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use self::challenge::{dns01_owner, Answers};
use super::certs::{Cert, Certs};

/// How the edge proves control of an exact name (wildcard names always
/// use DNS-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Challenge {
    /// A file on the HTTP listener (port 80 for a public CA).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A certificate on the TLS listener (port 443 for a public CA).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// `[http.acme]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (Let's Encrypt staging, production, or
    /// another ACME CA).
    directory: String,
    /// Contact URIs for the account (`mailto:…`).
    #[serde(default)]
    contact: Vec<String>,
    /// A CA certificate (PEM) to trust for the ACME server's own HTTPS,
    /// for a private CA; without it, the usual web roots.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// Order certificates for every site, not only those with
    /// `policy.tls.acme`.
    #[serde(default)]
    all_sites: bool,
    /// Renew once this fraction of the certificate's lifetime has passed.
    #[serde(default = "default_fraction")]
    renew_fraction: f64,
    #[serde(default = "default_check")]
    check_interval_secs: u64,
    /// The first retry after a failed order; it doubles up to 6 hours.
    #[serde(default = "default_retry")]
    retry_secs: u64,
    #[serde(default = "default_orders")]
    max_orders_per_hour: u32,
    /// `http-01` (default) or `tls-alpn-01`, for exact names.
    #[serde(default)]
    challenge: Challenge,
}

fn default_fraction() -> f64 {
    2.0 / 3.0
}
fn default_check() -> u64 {
    60
}
fn default_retry() -> u64 {
    60
}
fn default_orders() -> u32 {
    30
}

/// `[http.acme]` checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    pub directory: String,
    pub contact: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub all_sites: bool,
    pub renew_fraction: f64,
    pub check_interval: Duration,
    pub retry: Duration,
    pub max_orders_per_hour: u32,
    pub challenge: Challenge,
    /// dnsd's zone, when `[dns]` is configured: DNS-01 for the names in it.
    pub dns_zone: Option<String>,
}

impl Eq for AcmeSettings {}

impl AcmeConfig {
    pub fn validate(self) -> Result<AcmeSettings, (String, String)> {
        let bad = |key: &str, why: &str| Err((format!("http.acme.{key}"), why.to_string()));
        if !self.directory.starts_with("https://") {
            return bad("directory", "an https:// URL (the CA's ACME directory)");
        }
        if let Some(c) = self.contact.iter().find(|c| !c.starts_with("mailto:")) {
            return bad("contact", &format!("`{c}`: give mailto: URIs"));
        }
        if !(0.1..=0.95).contains(&self.renew_fraction) {
            return bad("renew_fraction", "must be 0.1 to 0.95");
        }
        if !(1..=86_400).contains(&self.check_interval_secs) {
            return bad("check_interval_secs", "must be 1 to 86400");
        }
        if !(1..=86_400).contains(&self.retry_secs) {
            return bad("retry_secs", "must be 1 to 86400");
        }
        if self.max_orders_per_hour == 0 {
            return bad("max_orders_per_hour", "must be more than 0");
        }
        Ok(AcmeSettings {
            directory: self.directory,
            contact: self.contact,
            ca_file: self.ca_file,
            all_sites: self.all_sites,
            renew_fraction: self.renew_fraction,
            check_interval: Duration::from_secs(self.check_interval_secs),
            retry: Duration::from_secs(self.retry_secs),
            max_orders_per_hour: self.max_orders_per_hour,
            challenge: self.challenge,
            dns_zone: None,
        })
    }
}

/// The certificate name of a site's ACME certificate.
pub fn cert_name(site: &str) -> String {
    format!("acme-{site}")
}

/// When a certificate valid from `not_before` to `not_after` (seconds
/// since the epoch) is due for renewal.
pub fn renew_at(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    not_before + ((not_after - not_before) as f64 * fraction) as i64
}

/// The retry delay after `failures` failed orders in a row.
pub fn backoff(first: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    (first * factor).min(Duration::from_secs(6 * 3600))
}

/// The wait before retrying a failed order: [`backoff`], and at least an
/// hour when the CA said its rate limit was hit (RFC 8555 `rateLimited`;
/// Let's Encrypt's limits are counted over hours, and retrying sooner only
/// counts against them again).
pub fn retry_wait(first: Duration, failures: u32, error: &str) -> Duration {
    let wait = backoff(first, failures);
    if error.contains("urn:ietf:params:acme:error:rateLimited") {
        wait.max(Duration::from_secs(3600))
    } else {
        wait
    }
}

/// One site's ordering state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SiteState {
    pub failures: u32,
    #[serde(skip)]
    pub next_try: Option<Instant>,
    pub last_error: Option<String>,
    /// Seconds since the epoch of the last issuance.
    pub last_issued: Option<u64>,
}

struct AcmeMetrics {
    orders: IntCounterVec,
    earliest_expiry: IntGauge,
    expiring: IntGaugeVec,
}

/// The ACME manager of one edge.
pub struct Acme {
    settings: AcmeSettings,
    dir: PathBuf,
    certs: Arc<Certs>,
    table: Table,
    /// The challenges being validated, answered by the listeners.
    answers: Arc<Answers>,
    /// DNS-01 TXT values put in the table, by owner.
    dns01: Mutex<HashMap<String, Vec<String>>>,
    /// The CA's renewal information, by site.
    ari: Mutex<HashMap<String, Ari>>,
    /// Whether the CA's directory offers ARI (unknown until first asked).
    ari_offered: Mutex<Option<bool>>,
    state: Mutex<HashMap<String, SiteState>>,
    forced: Mutex<HashSet<String>>,
    wake: Notify,
    account: tokio::sync::Mutex<Option<Account>>,
    started: Mutex<VecDeque<Instant>>,
    metrics: AcmeMetrics,
}

impl Acme {
    pub fn new(
        settings: AcmeSettings,
        data_dir: &Path,
        certs: Arc<Certs>,
        table: Table,
        registry: &Registry,
    ) -> Result<Arc<Acme>, prometheus::Error> {
        let metrics = AcmeMetrics {
            orders: IntCounterVec::new(
                Opts::new("edge_acme_orders_total", "ACME orders by result (started, issued, failed)."),
                &["result"],
            )?,
            earliest_expiry: IntGauge::new(
                "edge_tls_certificate_earliest_expiry_seconds",
                "Seconds until the first HTTPS certificate in the directory expires (negative: expired).",
            )?,
            expiring: IntGaugeVec::new(
                Opts::new("edge_tls_certificates_expiring", "HTTPS certificates expiring within 7 or 30 days."),
                &["within"],
            )?,
        };
        for result in ["started", "issued", "failed"] {
            metrics.orders.with_label_values(&[result]);
        }
        registry.register(Box::new(metrics.orders.clone()))?;
        registry.register(Box::new(metrics.earliest_expiry.clone()))?;
        registry.register(Box::new(metrics.expiring.clone()))?;
        Ok(Arc::new(Acme {
            settings,
            dir: data_dir.join("acme"),
            certs,
            table,
            answers: Arc::new(Answers::default()),
            dns01: Mutex::new(HashMap::new()),
            ari: Mutex::new(HashMap::new()),
            ari_offered: Mutex::new(None),
            state: Mutex::new(HashMap::new()),
            forced: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            account: tokio::sync::Mutex::new(None),
            started: Mutex::new(VecDeque::new()),
            metrics,
        }))
    }

    /// The key authorization for an HTTP-01 token being validated now.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.answers.http01(token)
    }

    /// The challenges being validated (the TLS listener's pre-handshake
    /// step answers TLS-ALPN-01 from them).
    pub fn answers(&self) -> &Arc<Answers> {
        &self.answers
    }

    /// Whether the TLS listener must answer TLS-ALPN-01.
    pub fn uses_tls_alpn(&self) -> bool {
        self.settings.challenge == Challenge::TlsAlpn01
    }

    /// Each site's ordering state (`edgectl cert list`).
    pub fn states(&self) -> HashMap<String, SiteState> {
        self.state.lock().clone()
    }

    /// Orders the site's certificate on the next round, due or not.
    pub fn renew(&self, site: &str) {
        self.forced.lock().insert(site.to_string());
        self.state.lock().entry(site.to_string()).or_default().next_try = None;
        self.wake.notify_one();
    }

    /// Whether the site gets ACME certificates.
    pub fn wants(&self, site: &Site) -> bool {
        self.settings.all_sites || site.policy.tls.acme
    }

    /// Checks every site each interval, when woken (`edgectl cert renew`)
    /// and after each table commit (a new site is ordered at once), until
    /// shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commits = self.table.subscribe();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                Ok(()) = commits.changed() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.round().await;
        }
    }

    async fn round(&self) {
        self.update_expiry_metrics();
        let snapshot = self.table.load();
        let now_epoch = epoch_now();
        let mut due = Vec::new();
        let mut ari_asks = ARI_ASKS_PER_ROUND;
        for site in snapshot.sites() {
            if !self.wants(site) {
                continue;
            }
            let names: Vec<String> = site.hosts().iter().map(|h| h.to_string()).filter(|h| self.can_prove(h)).collect();
            if names.is_empty() {
                continue;
            }
            let forced = self.forced.lock().contains(&*site.name);
            let current = self.certs.get(&cert_name(&site.name));
            let needed = forced
                || match &current {
                    None => true,
                    Some(c) => {
                        !names.iter().all(|n| c.covers(n))
                            || now_epoch >= renew_at(c.not_before, c.not_after, self.settings.renew_fraction)
                            || self.ari_renew_at(&site.name, c, &mut ari_asks).await.is_some_and(|at| now_epoch >= at)
                    }
                };
            if needed {
                due.push((site.name.to_string(), names, current));
            }
        }
        for (site, names, current) in due {
            let waiting = self.state.lock().get(&site).and_then(|s| s.next_try).is_some_and(|t| Instant::now() < t);
            if waiting || !self.budget() {
                continue;
            }
            self.metrics.orders.with_label_values(&["started"]).inc();
            tracing::info!(site = %site, names = ?names, "acme: ordering a certificate");
            let result = self.issue(&site, &names, current.as_deref()).await;
            let mut states = self.state.lock();
            let state = states.entry(site.clone()).or_default();
            match result {
                Ok(not_after) => {
                    self.metrics.orders.with_label_values(&["issued"]).inc();
                    tracing::info!(site = %site, names = ?names, not_after, "acme: certificate issued");
                    *state = SiteState { last_issued: Some(epoch_now() as u64), ..SiteState::default() };
                    self.forced.lock().remove(&site);
                    self.ari.lock().remove(&site);
                }
                Err(e) => {
                    self.metrics.orders.with_label_values(&["failed"]).inc();
                    state.failures += 1;
                    let wait = retry_wait(self.settings.retry, state.failures, &e);
                    state.next_try = Some(Instant::now() + wait);
                    tracing::error!(site = %site, error = %e, retry_in_secs = wait.as_secs(), "acme: order failed; the current certificate (if any) keeps serving");
                    state.last_error = Some(e);
                }
            }
        }
        self.update_expiry_metrics();
    }

    /// Counts an order against the hourly budget; false when spent.
    fn budget(&self) -> bool {
        let mut started = self.started.lock();
        let hour_ago = Instant::now().checked_sub(Duration::from_secs(3600));
        while started.front().is_some_and(|t| hour_ago.is_some_and(|h| *t < h)) {
            started.pop_front();
        }
        if started.len() >= self.settings.max_orders_per_hour as usize {
            tracing::warn!("acme: max_orders_per_hour reached; waiting");
            return false;
        }
        started.push_back(Instant::now());
        true
    }

    fn update_expiry_metrics(&self) {
        let now = epoch_now();
        let all = self.certs.list();
        let earliest = all.iter().map(|c| c.not_after - now).min().unwrap_or(0);
        self.metrics.earliest_expiry.set(earliest);
        for (label, days) in [("7d", 7), ("30d", 30)] {
            let n = all.iter().filter(|c| c.not_after - now < days * 86_400).count();
            self.metrics.expiring.with_label_values(&[label]).set(n as i64);
        }
    }

    async fn account(&self) -> Result<Account, String> {
        let mut cached = self.account.lock().await;
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let builder = || match &self.settings.ca_file {
            Some(ca) => Account::builder_with_root(ca).map_err(|e| format!("{}: {e}", ca.display())),
            None => Account::builder().map_err(|e| e.to_string()),
        };
        let path = self.dir.join("account.json");
        let account = match std::fs::read(&path) {
            Ok(bytes) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                builder()?.from_credentials(creds).await.map_err(|e| format!("account: {e}"))?
            }
            Err(_) => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
                let (account, creds) = builder()?
                    .create(&new, self.settings.directory.clone(), None)
                    .await
                    .map_err(|e| format!("creating the ACME account at {}: {e}", self.settings.directory))?;
                let text = serde_json::to_string(&creds).map_err(|e| e.to_string())?;
                crate::files::write_whole(&self.dir, "account.json", &text, 0o600)?;
                tracing::info!(directory = %self.settings.directory, "acme: account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// Whether a challenge can prove `host`: exact names always, wildcard
    /// names through DNS-01 when dnsd's zone holds them.
    fn can_prove(&self, host: &str) -> bool {
        !host.starts_with("*.") || self.settings.dns_zone.as_deref().is_some_and(|z| dns01_owner(host, z).is_some())
    }

    /// One order: a challenge for every name, then the certificate written
    /// to the directory. `current` is the certificate it replaces (for
    /// ARI). Returns its notAfter.
    async fn issue(&self, site: &str, names: &[String], current: Option<&Cert>) -> Result<i64, String> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let replaces = current.filter(|_| *self.ari_offered.lock() == Some(true)).and_then(cert_id);
        let new = NewOrder::new(&ids);
        let first = match &replaces {
            Some(id) => account.new_order(&NewOrder::new(&ids).replaces(id.clone())).await,
            None => account.new_order(&new).await,
        };
        let mut order = match first {
            Ok(order) => order,
            // A CA may refuse (or not echo) `replaces`, for example when the
            // certificate was replaced already: order without it, as lego
            // and certbot do.
            Err(e) if replaces.is_some() => {
                tracing::warn!(site = %site, error = %e, "acme: the order naming the certificate it replaces failed; ordering without `replaces`");
                account.new_order(&new).await.map_err(|e| format!("new order: {e}"))?
            }
            Err(e) => return Err(format!("new order: {e}")),
        };
        let mut placed = Vec::new();
        let answered = self.answer_challenges(&mut order, &mut placed).await;
        let ready = match answered {
            Ok(()) => {
                let policy = RetryPolicy::new().timeout(Duration::from_secs(60));
                order.poll_ready(&policy).await.map_err(|e| format!("waiting for validation: {e}"))
            }
            Err(e) => Err(e),
        };
        self.withdraw(placed).await;
        let status = ready?;
        if status != OrderStatus::Ready {
            let detail = order.refresh().await.ok().and_then(|s| s.error.as_ref().map(|e| e.to_string()));
            return Err(format!("order {status:?}{}", detail.map(|d| format!(": {d}")).unwrap_or_default()));
        }
        let key_pem = order.finalize().await.map_err(|e| format!("finalize: {e}"))?;
        let policy = RetryPolicy::new().timeout(Duration::from_secs(60));
        let chain = order.poll_certificate(&policy).await.map_err(|e| format!("certificate: {e}"))?;
        let name = cert_name(site);
        let text = format!("{}{}{}", chain.trim_end(), "\n", key_pem);
        crate::files::write_whole(self.certs.dir(), &format!("{name}.pem"), &text, 0o600)?;
        self.certs.refresh()?;
        let cert = self.certs.get(&name).ok_or_else(|| format!("{name}.pem was written but did not load"))?;
        Ok(cert.not_after)
    }

    /// Places each pending authorization's answer (recorded in `placed`
    /// for [`Self::withdraw`]) and tells the CA it is ready.
    async fn answer_challenges(&self, order: &mut instant_acme::Order, placed: &mut Vec<Placed>) -> Result<(), String> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let id = authz.identifier();
            let name = match id.identifier {
                Identifier::Dns(n) => n.clone(),
                other => return Err(format!("unexpected identifier {other:?}")),
            };
            let kind = match (id.wildcard, self.settings.challenge) {
                (true, _) => ChallengeType::Dns01,
                (false, Challenge::Http01) => ChallengeType::Http01,
                (false, Challenge::TlsAlpn01) => ChallengeType::TlsAlpn01,
            };
            let offered = format!("the CA offers no {kind:?} challenge for {name}");
            let mut challenge = authz.challenge(kind.clone()).ok_or(offered)?;
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeType::Http01 => {
                    let token = challenge.token.clone();
                    self.answers.add_http01(&token, key_authorization.as_str());
                    placed.push(Placed::Http01(token));
                }
                ChallengeType::TlsAlpn01 => {
                    self.answers.add_tls_alpn01(&name, key_authorization.digest().as_ref())?;
                    placed.push(Placed::TlsAlpn01(name.clone()));
                }
                _ => {
                    let zone = self.settings.dns_zone.as_deref().unwrap_or_default();
                    let owner = dns01_owner(&name, zone).ok_or_else(|| format!("{name}: not in dnsd's zone"))?;
                    let value = key_authorization.dns_value();
                    self.dns01.lock().entry(owner.clone()).or_default().push(value.clone());
                    placed.push(Placed::Dns01(owner.clone(), value));
                    self.put_dns01(&owner).await?;
                }
            }
            challenge.set_ready().await.map_err(|e| format!("challenge: {e}"))?;
        }
        Ok(())
    }

    /// Writes the DNS-01 TXT values of `owner` to the table (dnsd answers
    /// from it on the commit), or removes the name when none is left.
    async fn put_dns01(&self, owner: &str) -> Result<(), String> {
        let values = self.dns01.lock().get(owner).cloned().unwrap_or_default();
        let op = if values.is_empty() {
            serde_json::json!({"op": "delete", "kind": "dns_name", "name": owner})
        } else {
            let records: Vec<_> =
                values.iter().map(|v| serde_json::json!({"type": "TXT", "value": v, "ttl": 1})).collect();
            serde_json::json!({"op": "put", "entity": {"kind": "dns_name", "name": owner, "records": records}})
        };
        let txn: Transaction =
            serde_json::from_value(serde_json::json!({"comment": "acme dns-01 challenge", "ops": [op]}))
                .map_err(|e| format!("dns-01 record {owner}: {e}"))?;
        self.table.apply(txn, Who::internal("acme")).await.map_err(|e| format!("dns-01 record {owner}: {e}"))?;
        Ok(())
    }

    /// Takes the answers of an order down, validated or not.
    async fn withdraw(&self, placed: Vec<Placed>) {
        for p in placed {
            match p {
                Placed::Http01(token) => self.answers.remove_http01(&token),
                Placed::TlsAlpn01(name) => self.answers.remove_tls_alpn01(&name),
                Placed::Dns01(owner, value) => {
                    if let Some(values) = self.dns01.lock().get_mut(&owner) {
                        values.retain(|v| *v != value);
                    }
                    // The name's remaining values, or none: the name goes.
                    if let Err(e) = self.put_dns01(&owner).await {
                        tracing::error!(error = %e, "acme: could not remove a dns-01 record; remove it with edgectl");
                    }
                    self.dns01.lock().retain(|_, values| !values.is_empty());
                }
            }
        }
    }

    /// When the CA's renewal information (ARI) says to renew `site`'s
    /// certificate: a point drawn once in its suggested window, asked
    /// again when the CA's Retry-After has passed. None when the CA does
    /// not offer ARI or cannot be asked.
    async fn ari_renew_at(&self, site: &str, cert: &Cert, asks_left: &mut usize) -> Option<i64> {
        if *self.ari_offered.lock() == Some(false) {
            return None;
        }
        // The cached answer is for this certificate while its validity is
        // the same (no certificate parsing on every round).
        let validity = (cert.not_before, cert.not_after);
        if let Some(a) = self.ari.lock().get(site).filter(|a| a.cert == validity && Instant::now() < a.next_fetch) {
            return a.renew_at;
        }
        // A round asks about a bounded number of certificates, so
        // thousands of sites do not hold up new orders; the rest wait.
        if *asks_left == 0 {
            return None;
        }
        *asks_left -= 1;
        let id = cert_id(cert)?;
        let account = self.account().await.ok()?;
        let (renew_at, next_fetch) = match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                *self.ari_offered.lock() = Some(true);
                let window = (info.suggested_window.start.unix_timestamp(), info.suggested_window.end.unix_timestamp());
                let at = ari_point(window, rand::random::<f64>());
                tracing::info!(site = %site, window_start = window.0, window_end = window.1, renew_at = at, "acme: renewal information");
                (Some(at), retry_after.clamp(Duration::from_secs(60), Duration::from_secs(86_400)))
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                *self.ari_offered.lock() = Some(false);
                return None;
            }
            Err(e) => {
                tracing::warn!(site = %site, error = %e, "acme: renewal information unavailable; asking again in an hour");
                (None, Duration::from_secs(3600))
            }
        };
        self.ari
            .lock()
            .insert(site.to_string(), Ari { cert: validity, renew_at, next_fetch: Instant::now() + next_fetch });
        renew_at
    }
}

/// An answer placed for an order.
enum Placed {
    Http01(String),
    TlsAlpn01(String),
    /// Owner and TXT value.
    Dns01(String, String),
}

/// The CA's renewal information for one certificate.
struct Ari {
    /// The certificate it is about, by its validity (notBefore, notAfter).
    cert: (i64, i64),
    renew_at: Option<i64>,
    next_fetch: Instant,
}

/// ARI's certificate identifier (authority key identifier and serial).
fn cert_id(cert: &Cert) -> Option<CertificateIdentifier<'static>> {
    let leaf = cert.key.cert.first()?;
    CertificateIdentifier::try_from(leaf).ok().map(CertificateIdentifier::into_owned)
}

/// How many certificates one round asks the CA's renewal information
/// about (the others wait for the next round).
const ARI_ASKS_PER_ROUND: usize = 50;

/// The renewal time drawn in ARI's suggested window `(start, end)` with
/// `draw` in 0..1 (RFC 9773 §4.2: uniformly at random).
pub fn ari_point((start, end): (i64, i64), draw: f64) -> i64 {
    start + ((end - start).max(0) as f64 * draw.clamp(0.0, 1.0)) as i64
}

fn epoch_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time_and_backoff() {
        assert_eq!(renew_at(0, 90 * 86_400, 2.0 / 3.0), 60 * 86_400);
        let first = Duration::from_secs(60);
        assert_eq!(backoff(first, 1), first);
        assert_eq!(backoff(first, 2), first * 2);
        assert_eq!(backoff(first, 5), first * 16);
        assert_eq!(backoff(first, 40), Duration::from_secs(6 * 3600), "capped");
        let limited = "new order: API error: too many certificates (urn:ietf:params:acme:error:rateLimited)";
        assert_eq!(retry_wait(first, 1, limited), Duration::from_secs(3600));
        assert_eq!(retry_wait(first, 40, limited), Duration::from_secs(6 * 3600));
        assert_eq!(retry_wait(first, 1, "connection refused"), first);
    }

    #[test]
    fn ari_draws_a_point_in_the_window() {
        assert_eq!(ari_point((1000, 2000), 0.0), 1000);
        assert_eq!(ari_point((1000, 2000), 0.5), 1500);
        assert_eq!(ari_point((1000, 2000), 1.0), 2000);
        assert_eq!(ari_point((1000, 900), 0.7), 1000, "an inverted window means its start");
    }

    #[test]
    fn config_errors_name_the_key() {
        let parse = |t: &str| toml::from_str::<AcmeConfig>(t).unwrap().validate().map_err(|e| e.0);
        assert!(parse("directory = \"https://ca.example/dir\"").is_ok());
        assert_eq!(parse("directory = \"http://ca.example/dir\"").unwrap_err(), "http.acme.directory");
        assert_eq!(parse("directory = \"https://x/d\"\ncontact = [\"admin@x\"]").unwrap_err(), "http.acme.contact");
        assert_eq!(parse("directory = \"https://x/d\"\nrenew_fraction = 1.5").unwrap_err(), "http.acme.renew_fraction");
        let tls_alpn = parse("directory = \"https://x/d\"\nchallenge = \"tls-alpn-01\"");
        assert!(tls_alpn.is_ok());
        assert!(toml::from_str::<AcmeConfig>("directory = \"https://x/d\"\nchallenge = \"dns-01\"").is_err());
    }
}
