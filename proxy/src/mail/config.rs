//! `[mail]` in `edge.toml`: listeners, certificate, limits, how each
//! backend is reached, and the auth plug-in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[mail]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    #[serde(default = "default_hostname")]
    hostname: String,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    imap: Vec<SocketAddr>,
    #[serde(default)]
    imaps: Vec<SocketAddr>,
    #[serde(default)]
    pop3: Vec<SocketAddr>,
    #[serde(default)]
    pop3s: Vec<SocketAddr>,
    #[serde(default)]
    submission: Vec<SocketAddr>,
    #[serde(default)]
    submissions: Vec<SocketAddr>,
    #[serde(default)]
    mx: Vec<SocketAddr>,
    #[serde(default = "default_login_timeout")]
    login_timeout_secs: u64,
    #[serde(default = "default_idle")]
    idle_timeout_secs: u64,
    #[serde(default = "default_per_ip")]
    max_connections_per_ip: usize,
    #[serde(default = "default_failed")]
    max_failed_logins_per_ip_per_minute: u32,
    #[serde(default = "default_connect_timeout")]
    upstream_connect_timeout_ms: u64,
    #[serde(default)]
    upstream: UpstreamConfig,
    #[serde(default)]
    backends: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    auth: Option<AuthConfig>,
}

fn default_hostname() -> String {
    "mail.mayfirst.org".into()
}
fn default_login_timeout() -> u64 {
    60
}
fn default_idle() -> u64 {
    31 * 60
}
fn default_per_ip() -> usize {
    50
}
fn default_failed() -> u32 {
    20
}
fn default_connect_timeout() -> u64 {
    5000
}

/// How the edge reaches a backend's mail servers. In `[mail.upstream]`
/// every key has a default; in `[mail.backends.NAME]` a key left out is
/// taken from `[mail.upstream]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    tls: Option<UpstreamTls>,
    client_address: Option<ClientAddress>,
    imap_port: Option<u16>,
    pop3_port: Option<u16>,
    submission_port: Option<u16>,
    mx_port: Option<u16>,
    ca_file: Option<PathBuf>,
}

/// TLS towards a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTls {
    None,
    Starttls,
    /// Implicit TLS (give the TLS ports, e.g. 993, 995, 465).
    Tls,
}

/// How the client's address reaches a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAddress {
    /// IMAP `ID` (`x-originating-ip`), POP3 and SMTP `XCLIENT`.
    Native,
    /// A PROXY protocol v2 header before anything else.
    Proxy,
    None,
}

/// Checked upstream settings for one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: UpstreamTls,
    pub client_address: ClientAddress,
    pub imap_port: u16,
    pub pop3_port: u16,
    pub submission_port: u16,
    pub mx_port: u16,
    pub ca_file: Option<PathBuf>,
}

impl UpstreamConfig {
    fn over(&self, base: &Upstream) -> Upstream {
        Upstream {
            tls: self.tls.unwrap_or(base.tls),
            client_address: self.client_address.unwrap_or(base.client_address),
            imap_port: self.imap_port.unwrap_or(base.imap_port),
            pop3_port: self.pop3_port.unwrap_or(base.pop3_port),
            submission_port: self.submission_port.unwrap_or(base.submission_port),
            mx_port: self.mx_port.unwrap_or(base.mx_port),
            ca_file: self.ca_file.clone().or_else(|| base.ca_file.clone()),
        }
    }
}

/// `[mail.auth]`: the plug-in consulted before routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// The backend decides (the default).
    PassThrough,
    Ldap(LdapConfig),
}

/// `[mail.auth] kind = "ldap"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    pub url: String,
    /// Bind as the user with this DN (`{user}` is replaced, DN-escaped)...
    #[serde(default)]
    pub user_dn: Option<String>,
    /// ...or search under `base` with `filter` (`{user}` filter-escaped),
    /// then bind as the entry found.
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub filter: Option<String>,
    /// Who searches (anonymous when absent).
    #[serde(default)]
    pub bind_dn: Option<String>,
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// An attribute of the user's entry naming the backend, used when the
    /// table has no mail login for the user.
    #[serde(default)]
    pub route_attribute: Option<String>,
    #[serde(default = "default_cache")]
    pub cache_secs: u64,
    #[serde(default = "default_ldap_timeout")]
    pub timeout_ms: u64,
}

fn default_cache() -> u64 {
    60
}
fn default_ldap_timeout() -> u64 {
    3000
}

/// Which protocol a listener speaks, and whether TLS starts at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Imap,
    Pop3,
    Submission,
    Mx,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Submission => "submission",
            Protocol::Mx => "mx",
        }
    }

    pub const ALL: [Protocol; 4] = [Protocol::Imap, Protocol::Pop3, Protocol::Submission, Protocol::Mx];
}

/// One listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// TLS from the first byte (993, 995, 465).
    pub implicit_tls: bool,
}

/// Checked `[mail]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub hostname: String,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub listen: Vec<Listen>,
    /// Time to log in (IMAP, POP3, submission) or to start a mail
    /// transaction (MX), from the connect.
    pub login_timeout: Duration,
    /// A logged-in session with no traffic either way for this long is
    /// closed (≥ 30 min, for IMAP IDLE).
    pub idle_timeout: Duration,
    pub max_connections_per_ip: usize,
    pub max_failed_logins_per_ip_per_minute: u32,
    pub upstream_connect_timeout: Duration,
    pub upstream: Upstream,
    pub backends: BTreeMap<String, Upstream>,
    pub auth: Option<LdapConfig>,
}

impl Settings {
    /// How to reach backend `name`.
    pub fn upstream(&self, name: &str) -> &Upstream {
        self.backends.get(name).unwrap_or(&self.upstream)
    }
}

impl MailConfig {
    /// Checks the section; errors name the key.
    pub fn validate(self) -> Result<Settings, (String, String)> {
        let err = |key: &str, reason: &str| Err((format!("mail.{key}"), reason.to_string()));
        if self.hostname.is_empty() || self.hostname.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return err("hostname", "must be a host name");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return err("cert_file", "cert_file and key_file go together");
        }
        let mut listen = Vec::new();
        for (addrs, protocol, implicit_tls) in [
            (&self.imap, Protocol::Imap, false),
            (&self.imaps, Protocol::Imap, true),
            (&self.pop3, Protocol::Pop3, false),
            (&self.pop3s, Protocol::Pop3, true),
            (&self.submission, Protocol::Submission, false),
            (&self.submissions, Protocol::Submission, true),
            (&self.mx, Protocol::Mx, false),
        ] {
            listen.extend(addrs.iter().map(|&addr| Listen { addr, protocol, implicit_tls }));
        }
        if listen.is_empty() {
            return err(
                "imap",
                "no listener: give at least one of imap, imaps, pop3, pop3s, submission, submissions, mx",
            );
        }
        if !(5..=600).contains(&self.login_timeout_secs) {
            return err("login_timeout_secs", "must be between 5 and 600");
        }
        if self.idle_timeout_secs < 30 * 60 {
            return err("idle_timeout_secs", "must be at least 1800 (IMAP IDLE clients wake every 29 minutes)");
        }
        if self.max_connections_per_ip == 0 {
            return err("max_connections_per_ip", "must be at least 1");
        }
        if self.max_failed_logins_per_ip_per_minute == 0 {
            return err("max_failed_logins_per_ip_per_minute", "must be at least 1");
        }
        if !(100..=60_000).contains(&self.upstream_connect_timeout_ms) {
            return err("upstream_connect_timeout_ms", "must be between 100 and 60000");
        }
        let defaults = Upstream {
            tls: UpstreamTls::None,
            client_address: ClientAddress::Native,
            imap_port: 143,
            pop3_port: 110,
            submission_port: 587,
            mx_port: 25,
            ca_file: None,
        };
        let upstream = self.upstream.over(&defaults);
        check_ports("upstream", &upstream)?;
        let mut backends = BTreeMap::new();
        for (name, b) in &self.backends {
            let u = b.over(&upstream);
            check_ports(&format!("backends.{name}"), &u)?;
            backends.insert(name.to_ascii_lowercase(), u);
        }
        let auth = match self.auth {
            None | Some(AuthConfig::PassThrough) => None,
            Some(AuthConfig::Ldap(l)) => Some(check_ldap(l)?),
        };
        Ok(Settings {
            hostname: self.hostname,
            cert_file: self.cert_file,
            key_file: self.key_file,
            listen,
            login_timeout: Duration::from_secs(self.login_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_connections_per_ip: self.max_connections_per_ip,
            max_failed_logins_per_ip_per_minute: self.max_failed_logins_per_ip_per_minute,
            upstream_connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
            upstream,
            backends,
            auth,
        })
    }
}

fn check_ports(section: &str, u: &Upstream) -> Result<(), (String, String)> {
    for (key, port) in [
        ("imap_port", u.imap_port),
        ("pop3_port", u.pop3_port),
        ("submission_port", u.submission_port),
        ("mx_port", u.mx_port),
    ] {
        if port == 0 {
            return Err((format!("mail.{section}.{key}"), "must not be 0".into()));
        }
    }
    Ok(())
}

fn check_ldap(l: LdapConfig) -> Result<LdapConfig, (String, String)> {
    let err = |key: &str, reason: &str| Err((format!("mail.auth.{key}"), reason.to_string()));
    if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://") || l.url.starts_with("ldapi://")) {
        return err("url", "must start with ldap://, ldaps:// or ldapi://");
    }
    match (&l.user_dn, &l.base, &l.filter) {
        (Some(dn), None, None) if dn.contains("{user}") => {}
        (Some(_), None, None) => return err("user_dn", "must contain {user}"),
        (None, Some(_), Some(f)) if f.contains("{user}") => {}
        (None, Some(_), Some(_)) => return err("filter", "must contain {user}"),
        _ => return err("user_dn", "give either user_dn (bind as the user) or base and filter (search, then bind)"),
    }
    if l.bind_dn.is_some() != l.bind_password_file.is_some() {
        return err("bind_dn", "bind_dn and bind_password_file go together");
    }
    if l.cache_secs > 3600 {
        return err("cache_secs", "must be at most 3600");
    }
    if !(100..=60_000).contains(&l.timeout_ms) {
        return err("timeout_ms", "must be between 100 and 60000");
    }
    Ok(l)
}
