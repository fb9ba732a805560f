//! `edge.toml`: serde `File*` structs that mirror the file (unknown keys
//! refused), validated into [`Config`], whose values are all usable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use routing_table::EtcdConfig;
use serde::Deserialize;

/// Why a configuration was refused; the message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {reason}")]
    Invalid { path: PathBuf, key: String, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    edge: FileEdge,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    control: FileControl,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    log: FileLog,
    /// No section: no DNS listener.
    #[serde(default)]
    dns: Option<dnsd::DnsConfig>,
    /// No section: no SSH listener.
    #[serde(default)]
    ssh: Option<crate::ssh::SshConfig>,
    /// No section: no mail listeners.
    #[serde(default)]
    mail: Option<crate::mail::MailConfig>,
    /// No section: no HTTP listener.
    #[serde(default)]
    http: Option<crate::http::HttpConfig>,
    /// DEMO ONLY: built-in responders standing in for the demo backends.
    #[serde(default)]
    demo: crate::demo::DemoConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEdge {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
}

impl Default for FileEdge {
    fn default() -> Self {
        Self { data_dir: default_data_dir() }
    }
}

fn default_data_dir() -> PathBuf {
    "var".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    #[serde(default = "default_store_kind")]
    kind: String,
    #[serde(default = "default_store_path")]
    path: PathBuf,
    #[serde(default)]
    seed: Option<PathBuf>,
    /// Used when `kind = "etcd"`, and by `edge migrate`.
    #[serde(default)]
    etcd: Option<FileEtcd>,
}

impl Default for FileStore {
    fn default() -> Self {
        Self { kind: default_store_kind(), path: default_store_path(), seed: None, etcd: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEtcd {
    endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    prefix: String,
    #[serde(default = "default_etcd_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

fn default_etcd_prefix() -> String {
    "/edge/".into()
}
fn default_etcd_timeout() -> u64 {
    2000
}

impl FileEtcd {
    fn validate(self) -> Result<EtcdConfig, (&'static str, String)> {
        if self.endpoints.is_empty() {
            return Err(("store.etcd.endpoints", "needs at least one http:// or https:// address".into()));
        }
        for e in &self.endpoints {
            let ok = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")).is_some_and(|a| !a.is_empty());
            if !ok {
                return Err(("store.etcd.endpoints", format!("`{e}` is not an http:// or https:// address")));
            }
        }
        if self.prefix.is_empty() || !self.prefix.ends_with('/') {
            return Err(("store.etcd.prefix", format!("`{}` must be non-empty and end with `/`", self.prefix)));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err(("store.etcd.timeout_ms", "must be between 100 and 60000".into()));
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err(("store.etcd.password_file", "user and password_file go together".into()));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(("store.etcd.key_file", "cert_file and key_file go together".into()));
        }
        let tls = self.ca_file.is_some() || self.cert_file.is_some();
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(("store.etcd.endpoints", "with ca_file or cert_file, every endpoint must be https://".into()));
        }
        Ok(EtcdConfig {
            endpoints: self.endpoints,
            prefix: self.prefix,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            user: self.user,
            password_file: self.password_file,
            ca_file: self.ca_file,
            cert_file: self.cert_file,
            key_file: self.key_file,
        })
    }
}

fn default_store_kind() -> String {
    "sqlite".into()
}
fn default_store_path() -> PathBuf {
    "edge.db".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileControl {
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default)]
    allow_uids: Vec<u32>,
    #[serde(default)]
    allow_gids: Vec<u32>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
}

impl Default for FileControl {
    fn default() -> Self {
        Self {
            socket: None,
            mode: default_mode(),
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            max_body_bytes: default_max_body(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_mode() -> String {
    "0660".into()
}
fn default_max_body() -> usize {
    16 << 20
}
fn default_max_connections() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    #[serde(default = "default_admin_listen")]
    listen: SocketAddr,
}

impl Default for FileAdmin {
    fn default() -> Self {
        Self { listen: default_admin_listen() }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    #[serde(default = "default_log_level")]
    level: String,
}

impl Default for FileLog {
    fn default() -> Self {
        Self { level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// Which durable store holds the table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreConfig {
    Sqlite { path: PathBuf },
    Etcd(EtcdConfig),
}

/// Who may use the control socket, besides root and Edge's own uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

/// The control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    pub mode: u32,
    pub access: Access,
    pub max_body_bytes: usize,
    pub max_connections: usize,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    /// The embedded store's file, whichever `store` is (`edge migrate`).
    pub sqlite_path: PathBuf,
    /// `[store.etcd]`, whichever `store` is (`edge migrate`).
    pub etcd: Option<EtcdConfig>,
    /// Transaction file applied on a first start with an empty store.
    pub seed: Option<PathBuf>,
    pub control: ControlConfig,
    pub admin_listen: SocketAddr,
    pub log_level: String,
    /// The internal DNS server, when the file has a `[dns]` section.
    pub dns: Option<dnsd::Settings>,
    /// The SFTP/SSH forwarder, when the file has an `[ssh]` section.
    pub ssh: Option<crate::ssh::Settings>,
    /// The mail forwarders, when the file has a `[mail]` section.
    pub mail: Option<crate::mail::Settings>,
    /// The HTTP proxy, when the file has an `[http]` section.
    pub http: Option<crate::http::Settings>,
    /// DEMO ONLY: `[demo]`.
    pub demo: crate::demo::DemoConfig,
}

impl Config {
    /// Reads and checks `path`. Relative paths in it are relative to the
    /// current directory, as with nginx's `-p`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Checks configuration text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let invalid =
            |key: &str, reason: String| ConfigError::Invalid { path: path.into(), key: key.to_string(), reason };
        let data_dir = file.edge.data_dir;
        let sqlite_path = data_dir.join(&file.store.path);
        let etcd = file.store.etcd.map(FileEtcd::validate).transpose().map_err(|(key, reason)| invalid(key, reason))?;
        let store = match (file.store.kind.as_str(), &etcd) {
            ("sqlite", _) => StoreConfig::Sqlite { path: sqlite_path.clone() },
            ("etcd", Some(etcd)) => StoreConfig::Etcd(etcd.clone()),
            ("etcd", None) => return Err(invalid("store.etcd", "kind = \"etcd\" needs a [store.etcd] section".into())),
            (other, _) => {
                return Err(invalid(
                    "store.kind",
                    format!("`{other}` is not a store kind (expected \"sqlite\" or \"etcd\")"),
                ))
            }
        };
        let mode = u32::from_str_radix(file.control.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid("control.mode", format!("`{}` is not an octal file mode like \"0660\"", file.control.mode))
            })?;
        if file.control.max_body_bytes < 1024 {
            return Err(invalid("control.max_body_bytes", "must be at least 1024".into()));
        }
        if file.control.max_connections == 0 {
            return Err(invalid("control.max_connections", "must be at least 1".into()));
        }
        if tracing_subscriber::EnvFilter::try_new(&file.log.level).is_err() {
            return Err(invalid("log.level", format!("`{}` is not a level or filter", file.log.level)));
        }
        let seed = file.store.seed.filter(|p| !p.as_os_str().is_empty());
        let dns = file.dns.map(|d| d.validate()).transpose().map_err(|(key, reason)| invalid(key, reason))?;
        let ssh = file.ssh.map(|s| s.validate()).transpose().map_err(|(key, reason)| invalid(key, reason))?;
        let mail = file.mail.map(|m| m.validate()).transpose().map_err(|(key, reason)| invalid(&key, reason))?;
        let http = file.http.map(|h| h.validate()).transpose().map_err(|(key, reason)| invalid(&key, reason))?;
        Ok(Config {
            path: path.into(),
            control: ControlConfig {
                socket: file.control.socket.unwrap_or_else(|| data_dir.join("control.sock")),
                mode,
                access: Access { uids: file.control.allow_uids, gids: file.control.allow_gids },
                max_body_bytes: file.control.max_body_bytes,
                max_connections: file.control.max_connections,
            },
            data_dir,
            store,
            sqlite_path,
            etcd,
            seed,
            admin_listen: file.admin.listen,
            log_level: file.log.level,
            dns,
            ssh,
            mail,
            http,
            demo: file.demo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("edge.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let text = include_str!("../../config/edge.toml");
        let c = parse(text).unwrap();
        assert!(c.admin_listen.ip().is_loopback());
        assert_eq!(c.control.mode, 0o660);
    }

    #[test]
    fn empty_file_gets_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.control.socket, PathBuf::from("var/control.sock"));
        assert_eq!(c.store, StoreConfig::Sqlite { path: "var/edge.db".into() });
    }

    #[test]
    fn etcd_store() {
        let c = parse("[store]\nkind = \"etcd\"\n[store.etcd]\nendpoints = [\"http://127.0.0.1:2379\", \"http://127.0.0.1:22379\"]\n")
            .unwrap();
        let StoreConfig::Etcd(etcd) = &c.store else { panic!("{:?}", c.store) };
        assert_eq!(etcd.prefix, "/edge/");
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(c.sqlite_path, PathBuf::from("var/edge.db"));
    }

    #[test]
    fn ssh_section_defaults_and_errors_name_the_key() {
        let c = parse("[ssh]\n").unwrap();
        let ssh = c.ssh.unwrap();
        assert_eq!(ssh.upstream_port, 22);
        assert!(ssh.trust_on_first_use);
        assert_eq!(ssh.login_grace, std::time::Duration::from_secs(30));
        assert!(parse("").unwrap().ssh.is_none(), "no section, no listener");
        for (text, key) in [
            ("listen = []", "ssh.listen"),
            ("upstream_port = 0", "ssh.upstream_port"),
            ("login_grace_secs = 0", "ssh.login_grace_secs"),
            ("max_connections_per_ip = 0", "ssh.max_connections_per_ip"),
            ("max_failed_logins_per_ip_per_minute = 0", "ssh.max_failed_logins_per_ip_per_minute"),
            ("upstream_connect_timeout_ms = 5", "ssh.upstream_connect_timeout_ms"),
            ("certificate_validity_secs = 1", "ssh.certificate_validity_secs"),
            ("idle_timeout_secs = 5", "ssh.idle_timeout_secs"),
        ] {
            let e = parse(&format!("[ssh]\n{text}\n")).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        let e = parse("[ssh]\nlisten_port = 22\n").unwrap_err();
        assert!(e.contains("unknown field `listen_port`"), "{e}");
    }

    #[test]
    fn http_section_defaults_and_errors_name_the_key() {
        let c = parse("[http]\nlisten = [\"127.0.0.1:8080\"]\ntrusted_proxies = [\"10.0.0.0/8\"]\n").unwrap();
        let http = c.http.unwrap();
        assert_eq!(http.threads, 2);
        assert_eq!(http.upstream_connect_timeout, std::time::Duration::from_millis(2000));
        assert_eq!(http.trusted_proxies.len(), 1);
        assert!(http.tls_session_tickets && http.tls_listen_no_resumption.is_empty());
        assert_eq!(http.tls_session_cache, 20_000);
        for (text, key) in [
            ("listen = []", "http.listen"),
            ("listen = [\"127.0.0.1:0\"]", "http.listen"),
            ("listen = [\"127.0.0.1:80\"]\nthreads = 0", "http.threads"),
            ("listen = [\"127.0.0.1:80\"]\nupstream_connect_timeout_ms = 0", "http.upstream_connect_timeout_ms"),
            ("listen = [\"127.0.0.1:80\"]\nmax_body_bytes = 0", "http.max_body_bytes"),
            ("listen = [\"127.0.0.1:80\"]\nhttp2_idle_timeout_secs = 0", "http.http2_idle_timeout_secs"),
            ("listen = [\"127.0.0.1:80\"]\nmax_header_bytes = 100", "http.max_header_bytes"),
            ("listen = [\"127.0.0.1:80\"]\nbody_timeout_secs = 0", "http.body_timeout_secs"),
            ("listen = [\"127.0.0.1:80\"]\nbody_timeout_secs = 3601", "http.body_timeout_secs"),
            ("listen = [\"127.0.0.1:80\"]\ndefault_site = \"Not A Name!\"", "http.default_site"),
            (
                "tls_listen = [\"127.0.0.1:443\"]\ntls_listen_no_resumption = [\"127.0.0.1:443\"]",
                "http.tls_listen_no_resumption",
            ),
            ("tls_listen_no_resumption = [\"127.0.0.1:0\"]", "http.tls_listen_no_resumption"),
            ("tls_listen = [\"127.0.0.1:443\"]\ntls_session_cache = 20000000", "http.tls_session_cache"),
        ] {
            let e = parse(&format!("[http]\n{text}\n")).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        assert!(parse("[http]\nlisten = [\"127.0.0.1:80\"]\nwat = 1\n").is_err(), "unknown keys are refused");
        let c =
            parse("[http]\ntls_listen_no_resumption = [\"127.0.0.1:8443\"]\ntls_session_tickets = false\n").unwrap();
        let http = c.http.unwrap();
        assert!(!http.tls_session_tickets && http.tls_listen.is_empty());
        assert_eq!(http.tls_listen_no_resumption, vec!["127.0.0.1:8443".parse().unwrap()]);
    }

    #[test]
    fn mail_section_defaults_overrides_and_errors_name_the_key() {
        let c = parse(
            "[mail]\nimap = [\"127.0.0.1:1143\"]\nmx = [\"127.0.0.1:2525\"]\n\
             [mail.upstream]\ntls = \"starttls\"\n[mail.backends.MOSH40]\nclient_address = \"proxy\"\nimap_port = 1143\n",
        )
        .unwrap();
        let mail = c.mail.unwrap();
        assert_eq!(mail.listen.len(), 2);
        assert_eq!(mail.idle_timeout, std::time::Duration::from_secs(31 * 60));
        let default = mail.upstream("mosh12");
        assert_eq!((default.imap_port, default.mx_port), (143, 25));
        assert_eq!(default.tls, crate::mail::config::UpstreamTls::Starttls);
        let b = mail.upstream("mosh40");
        assert_eq!(b.tls, crate::mail::config::UpstreamTls::Starttls, "inherited from [mail.upstream]");
        assert_eq!(b.client_address, crate::mail::config::ClientAddress::Proxy);
        assert_eq!((b.imap_port, b.pop3_port), (1143, 110));
        assert!(mail.auth.is_none(), "pass-through by default");
        let ldap = "[mail.auth]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1\"\n";
        for (text, key) in [
            ("", "mail.imap"),
            ("imap = [\"127.0.0.1:1\"]\nidle_timeout_secs = 600", "mail.idle_timeout_secs"),
            ("imap = [\"127.0.0.1:1\"]\nlogin_timeout_secs = 0", "mail.login_timeout_secs"),
            ("imap = [\"127.0.0.1:1\"]\ncert_file = \"c.pem\"", "mail.cert_file"),
            ("imap = [\"127.0.0.1:1\"]\nmax_connections_per_ip = 0", "mail.max_connections_per_ip"),
            ("imap = [\"127.0.0.1:1\"]\n[mail.backends.b1]\nmx_port = 0", "mail.backends.b1.mx_port"),
            (
                "imap = [\"127.0.0.1:1\"]\n[mail.auth]\nkind = \"ldap\"\nurl = \"http://x\"\nuser_dn = \"uid={user}\"",
                "mail.auth.url",
            ),
            (&format!("imap = [\"127.0.0.1:1\"]\n{ldap}"), "mail.auth.user_dn"),
            (&format!("imap = [\"127.0.0.1:1\"]\n{ldap}user_dn = \"uid=x\""), "mail.auth.user_dn"),
            (&format!("imap = [\"127.0.0.1:1\"]\n{ldap}base = \"dc=x\"\nfilter = \"(uid=x)\""), "mail.auth.filter"),
            (
                &format!("imap = [\"127.0.0.1:1\"]\n{ldap}user_dn = \"uid={{user}}\"\nbind_dn = \"cn=x\""),
                "mail.auth.bind_dn",
            ),
        ] {
            let e = parse(&format!("[mail]\n{text}\n")).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
        let e = parse("[mail]\nimap = [\"127.0.0.1:1\"]\n[mail.upstream]\ntls = \"maybe\"\n").unwrap_err();
        assert!(e.contains("maybe"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[control]\nsockets = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `sockets`"), "{e}");
        let e = parse("[control]\nmode = \"999\"\n").unwrap_err();
        assert!(e.contains("`control.mode`"), "{e}");
        let e = parse("[admin]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e = parse("[store]\nkind = \"etcd\"\n").unwrap_err();
        assert!(e.contains("`store.etcd`"), "{e}");
        let e = parse("[store]\nkind = \"redis\"\n").unwrap_err();
        assert!(e.contains("`store.kind`"), "{e}");
        let e = parse("[store]\nkind = \"etcd\"\n[store.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n").unwrap_err();
        assert!(e.contains("`store.etcd.endpoints`"), "{e}");
        let e = parse("[store.etcd]\nendpoints = [\"http://a:1\"]\nprefix = \"edge\"\n").unwrap_err();
        assert!(e.contains("`store.etcd.prefix`"), "{e}");
        let e = parse("[store.etcd]\nendpoints = [\"http://a:1\"]\nuser = \"edge\"\n").unwrap_err();
        assert!(e.contains("`store.etcd.password_file`"), "{e}");
        let e = parse("[store.etcd]\nendpoints = [\"http://a:1\"]\nca_file = \"ca.pem\"\n").unwrap_err();
        assert!(e.contains("`store.etcd.endpoints`"), "{e}");
        let e = parse("[dns]\nzone = \"a..b\"\n").unwrap_err();
        assert!(e.contains("`dns.zone`"), "{e}");
        let e = parse("[dns]\nzones = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `zones`"), "{e}");
    }
}
