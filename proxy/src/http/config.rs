//! `[http]` in `edge.toml`: listeners, timeouts, limits and the trusted
//! proxies whose `X-Forwarded-For` is kept.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// `[http]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Plain HTTP listeners.
    #[serde(default)]
    listen: Vec<SocketAddr>,
    /// HTTPS listeners (TLS 1.2 and 1.3, HTTP/2 by ALPN).
    #[serde(default)]
    tls_listen: Vec<SocketAddr>,
    /// HTTPS listeners on which no TLS session is resumed: every handshake
    /// is a full one (HAProxy's `no-tls-tickets` without a session cache).
    /// For measuring full handshakes; everything else is as on `tls_listen`.
    #[serde(default)]
    tls_listen_no_resumption: Vec<SocketAddr>,
    /// Resumption by stateless session tickets (RFC 8446 4.6.1, RFC 5077),
    /// sealed with a key of this process's that rotates every 6 hours.
    #[serde(default = "yes")]
    tls_session_tickets: bool,
    /// Sessions kept in memory for resumption by session ID (TLS 1.2) and
    /// for TLS 1.3 clients when tickets are off; 0 keeps none.
    #[serde(default = "default_session_cache")]
    tls_session_cache: usize,
    /// The certificate directory (relative to `data_dir`): `NAME.pem` or
    /// `NAME.crt` + `NAME.key`.
    #[serde(default = "default_cert_dir")]
    cert_dir: PathBuf,
    /// The certificate for clients without SNI or with a name no
    /// certificate covers; without it, the first by name.
    #[serde(default)]
    default_cert: Option<String>,
    /// Names of the certificate made on a first start when the directory
    /// has none (signed by a local CA kept in `data_dir/http/`). Empty: no
    /// certificate is made, and HTTPS needs one in the directory.
    #[serde(default = "default_self_signed")]
    self_signed_names: Vec<String>,
    /// Offer HTTP/2 by ALPN on the HTTPS listeners.
    #[serde(default = "yes")]
    h2: bool,
    /// Worker threads of the proxy's own runtime.
    #[serde(default = "default_threads")]
    threads: usize,
    /// A site that answers every host the table does not know; without it,
    /// such requests get the 404 page.
    #[serde(default)]
    default_site: Option<String>,
    /// Clients whose `X-Forwarded-For` is kept and appended to; from anyone
    /// else it is replaced with the client's address.
    #[serde(default)]
    trusted_proxies: Vec<IpNet>,
    #[serde(default = "default_connect_timeout")]
    upstream_connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    upstream_read_timeout_secs: u64,
    #[serde(default = "default_idle_timeout")]
    upstream_idle_timeout_secs: u64,
    /// Request bodies larger than this get 413 (a site may set less).
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    /// Request headers larger than this (request line and header fields,
    /// as HTTP/1.1 writes them) get 431 (a site may set its own).
    #[serde(default = "default_max_header")]
    max_header_bytes: u32,
    /// Memory for cached responses; 0 turns the cache off.
    #[serde(default = "default_cache_bytes")]
    cache_bytes: u64,
    /// Larger responses are not cached.
    #[serde(default = "default_cache_max_object")]
    cache_max_object_bytes: u64,
    /// How long requests for a URL being fetched wait for that fetch
    /// (request coalescing) before going to the backend themselves.
    #[serde(default = "default_cache_lock_timeout")]
    cache_lock_timeout_ms: u64,
    /// `tcp` (connect), `http` (GET health_path, any status below 500) or
    /// `off`.
    #[serde(default = "default_health_check")]
    health_check: String,
    #[serde(default = "default_health_path")]
    health_path: String,
    #[serde(default = "default_health_interval")]
    health_interval_ms: u64,
    #[serde(default = "default_health_timeout")]
    health_timeout_ms: u64,
    /// Limits of a site under attack, per client address (a site's own
    /// tighter limits stay).
    #[serde(default = "default_attack_rate")]
    under_attack_requests_per_sec: u32,
    #[serde(default = "default_attack_concurrent")]
    under_attack_concurrent_per_ip: u32,
    /// Requests of a site under attack at its backends at once.
    #[serde(default = "default_attack_backend")]
    under_attack_backend_concurrency: u32,
    /// Sites that get their own `site` label on
    /// `edge_http_site_requests_total` (every other site counts as
    /// `other`), so the series stay bounded with 10,000 sites.
    #[serde(default)]
    metrics_sites: Vec<String>,
    /// On SIGTERM (or after an upgrade's hand-off), how long requests in
    /// flight get to finish once the listeners stop accepting; Pingora then
    /// cancels the rest.
    #[serde(default = "default_drain")]
    shutdown_drain_secs: u64,
    /// A request header must arrive whole within this, counted from the
    /// connection (or, between keepalive requests, from its first byte;
    /// on HTTP/2, each header block from the first wait for its rest);
    /// else the connection is closed (slowloris). 0: off.
    #[serde(default = "default_header_timeout")]
    header_timeout_secs: u64,
    /// An HTTP/2 connection with no request in flight for this long is
    /// closed (HTTP/1.1 keepalive connections: Pingora's 60 s).
    #[serde(default = "default_http2_idle_timeout")]
    http2_idle_timeout_secs: u64,
    /// A request body that sends nothing for this long is cut off
    /// (nginx's `client_body_timeout`): HTTP/1.1 gets a 408 and the
    /// connection is closed; an HTTP/2 connection with such a stream is
    /// closed.
    #[serde(default = "default_body_timeout")]
    body_timeout_secs: u64,
    /// Open HTTP and HTTPS connections per client address, both listeners
    /// together; more are closed at once. 0: no limit.
    #[serde(default = "default_connections_per_ip")]
    max_connections_per_ip: usize,
    /// Automatic certificates from an ACME CA.
    #[serde(default)]
    acme: Option<super::acme::AcmeConfig>,
}

fn default_header_timeout() -> u64 {
    10
}
fn default_http2_idle_timeout() -> u64 {
    60
}
fn default_body_timeout() -> u64 {
    60
}
fn default_connections_per_ip() -> usize {
    256
}
fn default_drain() -> u64 {
    5
}

fn default_attack_rate() -> u32 {
    10
}
fn default_attack_concurrent() -> u32 {
    4
}
fn default_attack_backend() -> u32 {
    8
}

fn default_health_check() -> String {
    "tcp".into()
}
fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval() -> u64 {
    1_000
}
fn default_health_timeout() -> u64 {
    1_000
}

fn default_cache_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_cache_max_object() -> u64 {
    8 * 1024 * 1024
}
fn default_cache_lock_timeout() -> u64 {
    3_000
}

fn default_session_cache() -> usize {
    20_000
}
fn default_cert_dir() -> PathBuf {
    PathBuf::from("certs")
}
fn default_self_signed() -> Vec<String> {
    vec!["localhost".to_string()]
}
fn yes() -> bool {
    true
}
fn default_threads() -> usize {
    2
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_read_timeout() -> u64 {
    60
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_body() -> u64 {
    64 * 1024 * 1024
}
/// nginx's default: four buffers of 8 KiB (`large_client_header_buffers`).
fn default_max_header() -> u32 {
    32 * 1024
}

/// `[http]` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub tls_listen_no_resumption: Vec<SocketAddr>,
    pub tls_session_tickets: bool,
    pub tls_session_cache: usize,
    /// As written; `app.rs` resolves it against `data_dir`.
    pub cert_dir: PathBuf,
    pub default_cert: Option<String>,
    pub self_signed_names: Vec<String>,
    pub h2: bool,
    pub threads: usize,
    pub default_site: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_header_bytes: u32,
    pub cache_bytes: usize,
    pub cache_max_object_bytes: usize,
    pub cache_lock_timeout: Duration,
    pub health: super::health::HealthSettings,
    pub under_attack: super::limits::UnderAttack,
    pub metrics_sites: std::collections::HashSet<String>,
    pub shutdown_drain_secs: u64,
    pub header_timeout: Option<Duration>,
    pub http2_idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections_per_ip: usize,
    pub acme: Option<super::acme::AcmeSettings>,
}

impl HttpConfig {
    /// Checks every key; an error names it (`http.<key>`) and says why.
    pub fn validate(self) -> Result<Settings, (String, String)> {
        let bad = |key: &str, why: &str| Err((format!("http.{key}"), why.to_string()));
        if self.listen.is_empty() && self.tls_listen.is_empty() && self.tls_listen_no_resumption.is_empty() {
            return bad("listen", "give at least one address (listen or tls_listen), or remove the [http] section");
        }
        if self.listen.iter().any(|a| a.port() == 0) {
            return bad("listen", "give each address a port (0 is not supported here)");
        }
        if self.tls_listen.iter().any(|a| a.port() == 0) {
            return bad("tls_listen", "give each address a port (0 is not supported here)");
        }
        if let Some(a) = self.tls_listen.iter().find(|a| self.listen.contains(a)) {
            return bad("tls_listen", &format!("{a} is also in listen"));
        }
        if self.tls_listen_no_resumption.iter().any(|a| a.port() == 0) {
            return bad("tls_listen_no_resumption", "give each address a port (0 is not supported here)");
        }
        if let Some(a) =
            self.tls_listen_no_resumption.iter().find(|a| self.listen.contains(a) || self.tls_listen.contains(a))
        {
            return bad("tls_listen_no_resumption", &format!("{a} is also in listen or tls_listen"));
        }
        if self.tls_session_cache > 10_000_000 {
            return bad("tls_session_cache", "must be 0 (none) to 10000000 sessions");
        }
        for n in &self.self_signed_names {
            let plain = n.strip_prefix("*.").unwrap_or(n);
            if routing_table::name::host(plain).is_err() {
                return bad("self_signed_names", &format!("`{n}` is not a DNS name"));
            }
        }
        if let Some(name) = &self.default_cert {
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok || name.starts_with('.') {
                return bad("default_cert", "a certificate's file name without extension (letters, digits, - _ .)");
            }
        }
        if !(1..=64).contains(&self.threads) {
            return bad("threads", "must be 1 to 64");
        }
        if !(1..=60_000).contains(&self.upstream_connect_timeout_ms) {
            return bad("upstream_connect_timeout_ms", "must be 1 to 60000");
        }
        if !(1..=3_600).contains(&self.upstream_read_timeout_secs) {
            return bad("upstream_read_timeout_secs", "must be 1 to 3600");
        }
        if !(1..=3_600).contains(&self.upstream_idle_timeout_secs) {
            return bad("upstream_idle_timeout_secs", "must be 1 to 3600");
        }
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes", "must be more than 0");
        }
        use routing_table::entity::{MAX_HEADER_BYTES, MIN_HEADER_BYTES};
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return bad("max_header_bytes", &format!("must be {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"));
        }
        if self.cache_bytes > 0 && !(1..=self.cache_bytes).contains(&self.cache_max_object_bytes) {
            return bad("cache_max_object_bytes", "must be 1 to cache_bytes");
        }
        if !(1..=60_000).contains(&self.cache_lock_timeout_ms) {
            return bad("cache_lock_timeout_ms", "must be 1 to 60000");
        }
        let probe = match self.health_check.as_str() {
            "off" => super::health::Probe::Off,
            "tcp" => super::health::Probe::Tcp,
            "http" => {
                let ok = self.health_path.starts_with('/') && self.health_path.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return bad("health_path", "an absolute path without spaces, like /health");
                }
                super::health::Probe::Http { path: self.health_path.clone() }
            }
            _ => return bad("health_check", "tcp, http or off"),
        };
        if !(100..=60_000).contains(&self.health_interval_ms) {
            return bad("health_interval_ms", "must be 100 to 60000");
        }
        if !(10..=60_000).contains(&self.health_timeout_ms) {
            return bad("health_timeout_ms", "must be 10 to 60000");
        }
        for (key, v) in [
            ("under_attack_requests_per_sec", self.under_attack_requests_per_sec),
            ("under_attack_concurrent_per_ip", self.under_attack_concurrent_per_ip),
            ("under_attack_backend_concurrency", self.under_attack_backend_concurrency),
        ] {
            if v == 0 {
                return bad(key, "must be more than 0");
            }
        }
        if self.shutdown_drain_secs > 600 {
            return bad("shutdown_drain_secs", "must be 0 to 600");
        }
        if self.header_timeout_secs > 3600 {
            return bad("header_timeout_secs", "must be 0 (off) to 3600");
        }
        if !(1..=3_600).contains(&self.http2_idle_timeout_secs) {
            return bad("http2_idle_timeout_secs", "must be 1 to 3600");
        }
        if !(1..=3_600).contains(&self.body_timeout_secs) {
            return bad("body_timeout_secs", "must be 1 to 3600");
        }
        if self.metrics_sites.len() > 1000 {
            return bad("metrics_sites", "at most 1000 sites get their own label");
        }
        let mut metrics_sites = std::collections::HashSet::new();
        for name in &self.metrics_sites {
            match routing_table::name::ident(name) {
                Ok(n) => metrics_sites.insert(n.to_string()),
                Err(e) => return bad("metrics_sites", &format!("`{name}` {e}")),
            };
        }
        let acme = self.acme.map(|a| a.validate()).transpose()?;
        if acme.is_some() && (self.listen.is_empty() || self.tls_listen.is_empty()) {
            return bad("acme", "needs listen (HTTP-01 challenges) and tls_listen (the certificates)");
        }
        let default_site = match self.default_site {
            Some(name) => match routing_table::name::ident(&name) {
                Ok(n) => Some(n.to_string()),
                Err(e) => return bad("default_site", &e.to_string()),
            },
            None => None,
        };
        Ok(Settings {
            listen: self.listen,
            tls_listen: self.tls_listen,
            tls_listen_no_resumption: self.tls_listen_no_resumption,
            tls_session_tickets: self.tls_session_tickets,
            tls_session_cache: self.tls_session_cache,
            cert_dir: self.cert_dir,
            default_cert: self.default_cert,
            self_signed_names: self.self_signed_names,
            h2: self.h2,
            threads: self.threads,
            default_site,
            trusted_proxies: self.trusted_proxies,
            upstream_connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
            upstream_read_timeout: Duration::from_secs(self.upstream_read_timeout_secs),
            upstream_idle_timeout: Duration::from_secs(self.upstream_idle_timeout_secs),
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            cache_bytes: self.cache_bytes as usize,
            cache_max_object_bytes: self.cache_max_object_bytes as usize,
            cache_lock_timeout: Duration::from_millis(self.cache_lock_timeout_ms),
            health: super::health::HealthSettings {
                probe,
                interval: Duration::from_millis(self.health_interval_ms),
                timeout: Duration::from_millis(self.health_timeout_ms),
            },
            under_attack: super::limits::UnderAttack {
                requests_per_sec: self.under_attack_requests_per_sec,
                concurrent_per_ip: self.under_attack_concurrent_per_ip,
                backend_concurrency: self.under_attack_backend_concurrency,
            },
            metrics_sites,
            shutdown_drain_secs: self.shutdown_drain_secs,
            header_timeout: (self.header_timeout_secs > 0).then(|| Duration::from_secs(self.header_timeout_secs)),
            http2_idle_timeout: Duration::from_secs(self.http2_idle_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            max_connections_per_ip: self.max_connections_per_ip,
            acme,
        })
    }
}
