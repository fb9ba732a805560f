//! `[http]` in `edge.toml`: listeners, timeouts, limits and the trusted
//! proxies whose `X-Forwarded-For` is kept.

use std::net::SocketAddr;
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

/// `[http]` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub default_site: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub max_body_bytes: u64,
}

impl HttpConfig {
    /// Checks every key; an error names it (`http.<key>`) and says why.
    pub fn validate(self) -> Result<Settings, (String, String)> {
        let bad = |key: &str, why: &str| Err((format!("http.{key}"), why.to_string()));
        if self.listen.is_empty() {
            return bad("listen", "give at least one address, or remove the [http] section");
        }
        if self.listen.iter().any(|a| a.port() == 0) {
            return bad("listen", "give each address a port (0 is not supported here)");
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
        let default_site = match self.default_site {
            Some(name) => match routing_table::name::ident(&name) {
                Ok(n) => Some(n.to_string()),
                Err(e) => return bad("default_site", &e.to_string()),
            },
            None => None,
        };
        Ok(Settings {
            listen: self.listen,
            threads: self.threads,
            default_site,
            trusted_proxies: self.trusted_proxies,
            upstream_connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
            upstream_read_timeout: Duration::from_secs(self.upstream_read_timeout_secs),
            upstream_idle_timeout: Duration::from_secs(self.upstream_idle_timeout_secs),
            max_body_bytes: self.max_body_bytes,
        })
    }
}
