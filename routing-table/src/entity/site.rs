//! Sites: the compact in-memory form, its JSON form, and their policies.

use std::fmt;
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{field, opt_member, FieldError};
use crate::name::{self, HostPattern, Name};

/// How a site is protected; switched by a table update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    #[default]
    Normal,
    /// Tight limits, answers from cache (stale too), few misses to the backend.
    UnderAttack,
    /// A fixed page; nothing reaches the backend.
    Quarantine,
    /// 503 with Retry-After.
    Maintenance,
}

impl Protection {
    fn is_normal(&self) -> bool {
        *self == Protection::Normal
    }
}

/// One weighted upstream of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteBackend {
    pub backend: Name,
    #[serde(default = "default_http_port")]
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// Send a PROXY protocol v2 header (the client's address) on each new
    /// connection to this backend and port.
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_protocol: bool,
}

fn default_http_port() -> u16 {
    80
}
fn default_weight() -> u16 {
    1
}

/// TLS settings of a site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPolicy {
    /// Certificate name in the certificate directory; `None` picks one by SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<Name>,
    #[serde(default)]
    pub redirect_https: bool,
    /// The edge obtains and renews this site's certificate from its ACME
    /// CA (`[http.acme]`), for its exact hosts.
    #[serde(default, skip_serializing_if = "is_false")]
    pub acme: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Cache settings of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Freshness for responses without explicit freshness, in seconds; 0
    /// means only what RFC 9111 allows.
    #[serde(default)]
    pub default_ttl_secs: u32,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self { enabled: true, default_ttl_secs: 0 }
    }
}

fn yes() -> bool {
    true
}

/// The bounds of `max_header_bytes`: the HTTP proxy (Pingora) reads at
/// most 1 MiB of request header.
pub const MIN_HEADER_BYTES: u32 = 1024;
pub const MAX_HEADER_BYTES: u32 = 1_048_575;

/// Per-site limits; `None` means the listener's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_per_ip: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u32>,
}

/// The less-used settings of a site, kept behind one shared pointer so that
/// the common case (all defaults) costs 8 bytes per site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    #[serde(default)]
    pub tls: TlsPolicy,
    #[serde(default)]
    pub cache: CachePolicy,
    #[serde(default)]
    pub limits: Limits,
    /// Clients in these networks are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<IpNet>,
    /// If not empty, only clients in these networks are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<IpNet>,
}

static DEFAULT_POLICY: LazyLock<Arc<SitePolicy>> = LazyLock::new(Default::default);

fn default_policy() -> Arc<SitePolicy> {
    DEFAULT_POLICY.clone()
}

fn is_default_policy(p: &Arc<SitePolicy>) -> bool {
    **p == SitePolicy::default()
}

/// A web site as written in JSON: host names routed to weighted backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
    /// Served names: exact (`www.example.org`) or wildcard (`*.example.org`).
    pub hosts: Vec<Name>,
    /// Names redirected permanently to the first host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<Name>,
    pub backends: Vec<SiteBackend>,
    #[serde(default, skip_serializing_if = "Protection::is_normal")]
    pub protection: Protection,
    #[serde(default = "default_policy", skip_serializing_if = "is_default_policy")]
    pub policy: Arc<SitePolicy>,
}

/// Most host names and aliases a site may have.
pub const MAX_SITE_NAMES: usize = 1024;

/// A web site, as kept in the table: compact, since there may be millions.
/// Hosts and aliases share one inline vector (one host costs no extra
/// allocation); JSON goes through [`SiteSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SiteSpec", into = "SiteSpec")]
pub struct Site {
    pub name: Name,
    pub member: Option<Name>,
    names: SmallVec<[Name; 1]>,
    host_count: u16,
    pub backends: Box<[SiteBackend]>,
    pub protection: Protection,
    pub policy: Arc<SitePolicy>,
}

impl TryFrom<SiteSpec> for Site {
    type Error = String;

    fn try_from(spec: SiteSpec) -> Result<Self, String> {
        if spec.hosts.len() + spec.aliases.len() > MAX_SITE_NAMES {
            return Err(format!("a site has at most {MAX_SITE_NAMES} hosts and aliases"));
        }
        let host_count = spec.hosts.len() as u16;
        let names = spec.hosts.into_iter().chain(spec.aliases).collect();
        Ok(Site {
            name: spec.name,
            member: spec.member,
            names,
            host_count,
            backends: spec.backends.into(),
            protection: spec.protection,
            policy: spec.policy,
        })
    }
}

impl From<Site> for SiteSpec {
    fn from(site: Site) -> Self {
        SiteSpec {
            hosts: site.hosts().to_vec(),
            aliases: site.aliases().to_vec(),
            name: site.name,
            member: site.member,
            backends: site.backends.into(),
            protection: site.protection,
            policy: site.policy,
        }
    }
}

impl Site {
    /// A site with default policies (tests, benchmarks, importers).
    pub fn new(name: &str, hosts: &[&str], backends: Vec<SiteBackend>) -> Site {
        Site {
            name: name.into(),
            member: None,
            names: hosts.iter().map(|h| Name::from(*h)).collect(),
            host_count: hosts.len() as u16,
            backends: backends.into(),
            protection: Protection::Normal,
            policy: default_policy(),
        }
    }

    /// Served names, exact or `*.` wildcard.
    pub fn hosts(&self) -> &[Name] {
        &self.names[..self.host_count as usize]
    }

    /// Names redirected to the first host.
    pub fn aliases(&self) -> &[Name] {
        &self.names[self.host_count as usize..]
    }

    /// The index keys of `hosts` then `aliases`: an exact host shares the
    /// site's own string; a wildcard gives its suffix and `true`.
    pub fn host_keys(&self) -> impl Iterator<Item = HostKey> + '_ {
        self.names.iter().map(|h| match h.strip_prefix("*.") {
            Some(suffix) => HostKey { name: suffix.into(), wildcard: true },
            None => HostKey { name: h.clone(), wildcard: false },
        })
    }
}

/// A key of the host index: an exact host, or the suffix of `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub name: Name,
    pub wildcard: bool,
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// Merges repeated backends of a site (after a move) by adding weights.
pub(super) fn dedup_backends(backends: &mut Vec<SiteBackend>) {
    let mut out: Vec<SiteBackend> = Vec::with_capacity(backends.len());
    for b in backends.drain(..) {
        match out.iter_mut().find(|o| o.backend == b.backend && o.port == b.port) {
            Some(o) => o.weight = o.weight.saturating_add(b.weight),
            None => out.push(b),
        }
    }
    *backends = out;
}

impl Site {
    pub(super) fn normalized(self) -> Result<Site, FieldError> {
        if self.hosts().is_empty() {
            return Err(FieldError::new("hosts", "needs at least one host"));
        }
        if self.backends.is_empty() {
            return Err(FieldError::new("backends", "needs at least one backend"));
        }
        let hosts = patterns("hosts", self.hosts())?;
        let aliases = patterns("aliases", self.aliases())?;
        if let Some(i) = aliases.iter().position(|a| hosts.contains(a)) {
            return Err(FieldError::new(format!("aliases[{i}]"), "is also in `hosts`"));
        }
        let mut backends = Vec::with_capacity(self.backends.len());
        for (i, b) in self.backends.iter().enumerate() {
            if b.weight == 0 {
                return Err(FieldError::new(format!("backends[{i}].weight"), "must be at least 1"));
            }
            if b.port == 0 {
                return Err(FieldError::new(format!("backends[{i}].port"), "must not be 0"));
            }
            let backend = field(&format!("backends[{i}].backend"), name::ident(&b.backend))?;
            backends.push(SiteBackend { backend, ..b.clone() });
        }
        dedup_backends(&mut backends);
        let mut policy = self.policy;
        if let Some(cert) = &policy.tls.cert {
            let cert = field("policy.tls.cert", name::ident(cert))?;
            Arc::make_mut(&mut policy).tls.cert = Some(cert);
        }
        if let Some(n) = policy.limits.max_header_bytes {
            if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) {
                return Err(FieldError::new(
                    "policy.limits.max_header_bytes",
                    format!("must be {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"),
                ));
            }
        }
        if is_default_policy(&policy) {
            policy = default_policy(); // share one allocation among all sites
        }
        let host_count = hosts.len() as u16;
        Ok(Site {
            name: field("name", name::ident(&self.name))?,
            member: opt_member(self.member)?,
            names: hosts.into_iter().chain(aliases).collect(),
            host_count,
            backends: backends.into(),
            protection: self.protection,
            policy,
        })
    }
}

fn patterns(what: &str, raw: &[Name]) -> Result<Vec<Name>, FieldError> {
    let mut out: Vec<Name> = Vec::with_capacity(raw.len());
    for (i, h) in raw.iter().enumerate() {
        let name = HostPattern::parse(h).map_err(|e| FieldError::new(format!("{what}[{i}]"), e))?.to_name();
        if out.contains(&name) {
            return Err(FieldError::new(format!("{what}[{i}]"), format!("`{name}` is listed twice")));
        }
        out.push(name);
    }
    Ok(out)
}
