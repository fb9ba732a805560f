//! The entities of the routing table, as admins write them in JSON and as
//! the store keeps them.
//!
//! Every entity is checked and normalised by [`Entity::normalized`] before it
//! enters a snapshot; a type that has been through it holds no raw input.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::name::{self, HostPattern, Name, NameError};
use crate::sharded::Named;

/// The kinds of entity, also the first half of an [`EntityKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Backend,
    Member,
    Site,
    MailLogin,
    MailDomain,
    SftpLogin,
    Database,
    DnsName,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Backend,
        Kind::Member,
        Kind::Site,
        Kind::MailLogin,
        Kind::MailDomain,
        Kind::SftpLogin,
        Kind::Database,
        Kind::DnsName,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backend => "backend",
            Kind::Member => "member",
            Kind::Site => "site",
            Kind::MailLogin => "mail_login",
            Kind::MailDomain => "mail_domain",
            Kind::SftpLogin => "sftp_login",
            Kind::Database => "database",
            Kind::DnsName => "dns_name",
        }
    }

    /// Parses the singular (`site`) or plural (`sites`) spelling.
    pub fn parse(s: &str) -> Option<Kind> {
        let singular = s.strip_suffix('s').unwrap_or(s);
        Kind::ALL.into_iter().find(|k| k.as_str() == s || k.as_str() == singular)
    }

    /// Normalises a name of this kind the way the entity's own key is.
    pub fn normalize_name(self, raw: &str) -> Result<Name, NameError> {
        match self {
            Kind::Backend | Kind::Member | Kind::Site => name::ident(raw),
            Kind::MailLogin | Kind::SftpLogin => name::user(raw),
            Kind::MailDomain => name::host(raw),
            Kind::Database => name::database(raw),
            Kind::DnsName => dns_owner(raw),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one entity: its kind and its normalised name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityKey {
    pub kind: Kind,
    pub name: Name,
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind, self.name)
    }
}

/// A problem with one field of an entity; the transaction layer adds which
/// operation it was in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self { field: field.into(), reason: reason.to_string() }
    }
}

fn field<T>(field: &str, r: Result<T, NameError>) -> Result<T, FieldError> {
    r.map_err(|e| FieldError::new(field, e))
}

/// State of a backend server, as health checks and admins set it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    #[default]
    Up,
    /// Keeps its live sessions; gets no new ones where another is available.
    Draining,
    Down,
}

/// A named server (`mosh12` → `10.0.0.12`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: Name,
    /// IPv4 and/or IPv6 addresses; the first of each family is preferred.
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub state: BackendState,
}

impl Backend {
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }
}

/// A co-op member: owns sites, logins, mail domains and databases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

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

/// A mailbox login (IMAP, POP3, submission) and the backend holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailLogin {
    pub user: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
    pub backend: Name,
}

/// A mail domain for inbound MX, with per-address overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailDomain {
    pub domain: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
    pub backend: Name,
    /// Local part → backend, for addresses held elsewhere than the domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<Name, Name>,
}

/// How the edge logs in upstream for an SFTP user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuth {
    /// Passwords and keyboard-interactive pass through; keys map to the
    /// edge's user certificate.
    #[default]
    PassThrough,
    /// Always the edge's user certificate.
    Certificate,
}

/// An SFTP/SSH login and the backend holding the member's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpLogin {
    pub user: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
    pub backend: Name,
    #[serde(default)]
    pub upstream_auth: UpstreamAuth,
    /// OpenSSH `authorized_keys` lines accepted at the edge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
    #[serde(default)]
    pub port_forwarding: bool,
}

/// A database and the server holding it; dnsd answers `<name>.mysql.<zone>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
    /// The backend (database server) that holds it.
    pub server: Name,
}

/// Record types an admin may add as extra internal names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    A,
    Aaaa,
    Cname,
    Mx,
    Srv,
    Txt,
}

/// One record of an extra name; `value` uses zone-file syntax
/// (`10 mail.example.org` for MX, `0 5 3306 db1` for SRV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    #[serde(rename = "type")]
    pub rtype: RecordType,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

/// Extra records at one name of the internal zone (relative to the zone;
/// `@` is the apex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsName {
    pub name: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
    pub records: Vec<DnsRecord>,
}

fn dns_owner(raw: &str) -> Result<Name, NameError> {
    if raw == "@" {
        return Ok("@".into());
    }
    name::host(raw)
}

/// Any entity, tagged by `kind` in JSON: `{"kind": "site", "name": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entity {
    Backend(Backend),
    Member(Member),
    Site(Site),
    MailLogin(MailLogin),
    MailDomain(MailDomain),
    SftpLogin(SftpLogin),
    Database(Database),
    DnsName(DnsName),
}

impl Entity {
    pub fn kind(&self) -> Kind {
        match self {
            Entity::Backend(_) => Kind::Backend,
            Entity::Member(_) => Kind::Member,
            Entity::Site(_) => Kind::Site,
            Entity::MailLogin(_) => Kind::MailLogin,
            Entity::MailDomain(_) => Kind::MailDomain,
            Entity::SftpLogin(_) => Kind::SftpLogin,
            Entity::Database(_) => Kind::Database,
            Entity::DnsName(_) => Kind::DnsName,
        }
    }

    pub fn name(&self) -> &Name {
        match self {
            Entity::Backend(e) => &e.name,
            Entity::Member(e) => &e.name,
            Entity::Site(e) => &e.name,
            Entity::MailLogin(e) => &e.user,
            Entity::MailDomain(e) => &e.domain,
            Entity::SftpLogin(e) => &e.user,
            Entity::Database(e) => &e.name,
            Entity::DnsName(e) => &e.name,
        }
    }

    pub fn key(&self) -> EntityKey {
        EntityKey { kind: self.kind(), name: self.name().clone() }
    }

    /// The owning member, if any.
    pub fn member(&self) -> Option<&Name> {
        match self {
            Entity::Backend(_) | Entity::Member(_) => None,
            Entity::Site(e) => e.member.as_ref(),
            Entity::MailLogin(e) => e.member.as_ref(),
            Entity::MailDomain(e) => e.member.as_ref(),
            Entity::SftpLogin(e) => e.member.as_ref(),
            Entity::Database(e) => e.member.as_ref(),
            Entity::DnsName(e) => e.member.as_ref(),
        }
    }

    /// Every backend this entity routes to (with repeats).
    pub fn backends(&self) -> Vec<&Name> {
        match self {
            Entity::Backend(_) | Entity::Member(_) | Entity::DnsName(_) => Vec::new(),
            Entity::Site(e) => e.backends.iter().map(|b| &b.backend).collect(),
            Entity::MailLogin(e) => vec![&e.backend],
            Entity::MailDomain(e) => std::iter::once(&e.backend).chain(e.overrides.values()).collect(),
            Entity::SftpLogin(e) => vec![&e.backend],
            Entity::Database(e) => vec![&e.server],
        }
    }

    /// Rewrites every reference to backend `from` (or to any backend, if
    /// `from` is `None`) into `to`. Returns whether anything changed.
    pub fn retarget(&mut self, from: Option<&str>, to: &Name) -> bool {
        let hit = |b: &Name| from.is_none_or(|f| &**b == f) && b != to;
        let mut changed = false;
        let mut swap = |b: &mut Name| {
            if hit(b) {
                *b = to.clone();
                changed = true;
            }
        };
        match self {
            Entity::Backend(_) | Entity::Member(_) | Entity::DnsName(_) => {}
            Entity::Site(e) => {
                let mut backends = e.backends.to_vec();
                backends.iter_mut().for_each(|b| swap(&mut b.backend));
                dedup_backends(&mut backends);
                e.backends = backends.into();
            }
            Entity::MailLogin(e) => swap(&mut e.backend),
            Entity::MailDomain(e) => {
                swap(&mut e.backend);
                e.overrides.values_mut().for_each(swap);
            }
            Entity::SftpLogin(e) => swap(&mut e.backend),
            Entity::Database(e) => swap(&mut e.server),
        }
        changed
    }

    /// Checks every field and returns the normalised entity.
    pub fn normalized(self) -> Result<Entity, FieldError> {
        Ok(match self {
            Entity::Backend(e) => Entity::Backend(e.normalized()?),
            Entity::Member(e) => Entity::Member(Member { name: field("name", name::ident(&e.name))?, note: e.note }),
            Entity::Site(e) => Entity::Site(e.normalized()?),
            Entity::MailLogin(e) => Entity::MailLogin(MailLogin {
                user: field("user", name::user(&e.user))?,
                member: opt_member(e.member)?,
                backend: field("backend", name::ident(&e.backend))?,
            }),
            Entity::MailDomain(e) => Entity::MailDomain(e.normalized()?),
            Entity::SftpLogin(e) => Entity::SftpLogin(e.normalized()?),
            Entity::Database(e) => Entity::Database(Database {
                name: field("name", name::database(&e.name))?,
                member: opt_member(e.member)?,
                server: field("server", name::ident(&e.server))?,
            }),
            Entity::DnsName(e) => Entity::DnsName(e.normalized()?),
        })
    }
}

macro_rules! named {
    ($($t:ty => $f:ident),*) => {$(
        impl Named for $t {
            fn name(&self) -> &str {
                &self.$f
            }
        }
    )*};
}
named!(Backend => name, Member => name, Site => name, MailLogin => user, MailDomain => domain, SftpLogin => user, Database => name, DnsName => name);

/// What a name inside an entity refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefTo {
    Backend,
    Member,
}

impl Entity {
    /// Calls `f` on every reference this entity holds to a backend or member.
    pub fn refs_mut(&mut self, mut f: impl FnMut(RefTo, &mut Name)) {
        let member = match self {
            Entity::Backend(_) | Entity::Member(_) => None,
            Entity::Site(e) => {
                e.backends.iter_mut().for_each(|b| f(RefTo::Backend, &mut b.backend));
                e.member.as_mut()
            }
            Entity::MailLogin(e) => {
                f(RefTo::Backend, &mut e.backend);
                e.member.as_mut()
            }
            Entity::MailDomain(e) => {
                f(RefTo::Backend, &mut e.backend);
                e.overrides.values_mut().for_each(|b| f(RefTo::Backend, b));
                e.member.as_mut()
            }
            Entity::SftpLogin(e) => {
                f(RefTo::Backend, &mut e.backend);
                e.member.as_mut()
            }
            Entity::Database(e) => {
                f(RefTo::Backend, &mut e.server);
                e.member.as_mut()
            }
            Entity::DnsName(e) => e.member.as_mut(),
        };
        if let Some(m) = member {
            f(RefTo::Member, m);
        }
    }
}

fn opt_member(member: Option<Name>) -> Result<Option<Name>, FieldError> {
    member.map(|m| field("member", name::ident(&m))).transpose()
}

/// Merges repeated backends of a site (after a move) by adding weights.
fn dedup_backends(backends: &mut Vec<SiteBackend>) {
    let mut out: Vec<SiteBackend> = Vec::with_capacity(backends.len());
    for b in backends.drain(..) {
        match out.iter_mut().find(|o| o.backend == b.backend && o.port == b.port) {
            Some(o) => o.weight = o.weight.saturating_add(b.weight),
            None => out.push(b),
        }
    }
    *backends = out;
}

impl Backend {
    fn normalized(self) -> Result<Backend, FieldError> {
        if self.addresses.is_empty() {
            return Err(FieldError::new("addresses", "needs at least one address"));
        }
        Ok(Backend { name: field("name", name::ident(&self.name))?, ..self })
    }
}

impl Site {
    fn normalized(self) -> Result<Site, FieldError> {
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

impl MailDomain {
    fn normalized(self) -> Result<MailDomain, FieldError> {
        let mut overrides = BTreeMap::new();
        for (local, backend) in self.overrides {
            let key = field(&format!("overrides.{local}"), name::user(&local))?;
            if key.contains('@') {
                return Err(FieldError::new(format!("overrides.{local}"), "is a local part: no `@`"));
            }
            overrides.insert(key, field(&format!("overrides.{local}"), name::ident(&backend))?);
        }
        Ok(MailDomain {
            domain: field("domain", name::host(&self.domain))?,
            member: opt_member(self.member)?,
            backend: field("backend", name::ident(&self.backend))?,
            overrides,
        })
    }
}

impl SftpLogin {
    fn normalized(self) -> Result<SftpLogin, FieldError> {
        for (i, key) in self.authorized_keys.iter().enumerate() {
            let mut parts = key.split_whitespace();
            let ok = matches!((parts.next(), parts.next()), (Some(t), Some(_)) if t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"));
            if !ok {
                return Err(FieldError::new(
                    format!("authorized_keys[{i}]"),
                    "is not an OpenSSH public key line (`ssh-ed25519 AAAA... comment`)",
                ));
            }
        }
        Ok(SftpLogin {
            user: field("user", name::user(&self.user))?,
            member: opt_member(self.member)?,
            backend: field("backend", name::ident(&self.backend))?,
            ..self
        })
    }
}

impl DnsName {
    fn normalized(self) -> Result<DnsName, FieldError> {
        if self.records.is_empty() {
            return Err(FieldError::new("records", "needs at least one record"));
        }
        let has_cname = self.records.iter().any(|r| r.rtype == RecordType::Cname);
        if has_cname && self.records.len() > 1 {
            return Err(FieldError::new("records", "a CNAME cannot sit beside other records (RFC 1034)"));
        }
        let mut records = Vec::with_capacity(self.records.len());
        for (i, r) in self.records.into_iter().enumerate() {
            let value = r.normalized_value().map_err(|e| FieldError::new(format!("records[{i}].value"), e))?;
            records.push(DnsRecord { value, ..r });
        }
        Ok(DnsName { name: field("name", dns_owner(&self.name))?, member: opt_member(self.member)?, records })
    }
}

impl DnsRecord {
    fn normalized_value(&self) -> Result<String, String> {
        let v = self.value.trim();
        let parts: Vec<&str> = v.split_whitespace().collect();
        let target = |s: &str| name::host(s).map(|n| n.to_string()).map_err(|e| format!("target `{s}` {e}"));
        let num = |s: &str| s.parse::<u16>().map_err(|_| format!("`{s}` is not a number from 0 to 65535"));
        match (self.rtype, parts.as_slice()) {
            (RecordType::A, [a]) => {
                a.parse::<Ipv4Addr>().map(|a| a.to_string()).map_err(|_| format!("`{a}` is not an IPv4 address"))
            }
            (RecordType::Aaaa, [a]) => {
                a.parse::<Ipv6Addr>().map(|a| a.to_string()).map_err(|_| format!("`{a}` is not an IPv6 address"))
            }
            (RecordType::Cname, [t]) => target(t),
            (RecordType::Mx, [p, t]) => Ok(format!("{} {}", num(p)?, target(t)?)),
            (RecordType::Srv, [p, w, port, t]) => Ok(format!("{} {} {} {}", num(p)?, num(w)?, num(port)?, target(t)?)),
            (RecordType::Txt, _) if !v.is_empty() && v.len() <= 4000 => Ok(v.to_string()),
            (rtype, _) => Err(format!("is not valid {rtype:?} data")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Entity, String> {
        serde_json::from_str::<Entity>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse(r#"{"kind":"backend","name":"m","addresses":["10.0.0.1"],"sate":"up"}"#).unwrap_err();
        assert!(err.contains("unknown field `sate`"), "{err}");
    }

    #[test]
    fn site_defaults_share_one_policy() {
        let json = r#"{"kind":"site","name":"Blog","hosts":["WWW.Example.org"],"backends":[{"backend":"MOSH1"}]}"#;
        let a = parse(json).unwrap().normalized().unwrap();
        let b = parse(json).unwrap().normalized().unwrap();
        let (Entity::Site(a), Entity::Site(b)) = (a, b) else { panic!() };
        assert!(Arc::ptr_eq(&a.policy, &b.policy));
        assert_eq!(&*a.hosts()[0], "www.example.org");
        assert!(a.aliases().is_empty());
        assert_eq!(&*a.backends[0].backend, "mosh1");
        assert_eq!(a.backends[0].port, 80);
        // Defaults are not written back out.
        let out = serde_json::to_string(&Entity::Site(a)).unwrap();
        assert!(!out.contains("policy"), "{out}");
    }

    #[test]
    fn field_errors_name_the_field() {
        let e = parse(r#"{"kind":"site","name":"b","hosts":["ok.org","bad host"],"backends":[{"backend":"m"}]}"#)
            .unwrap()
            .normalized()
            .unwrap_err();
        assert_eq!(e.field, "hosts[1]");
        let e = parse(r#"{"kind":"dns_name","name":"x","records":[{"type":"A","value":"1.2.3"}]}"#)
            .unwrap()
            .normalized()
            .unwrap_err();
        assert_eq!(e.field, "records[0].value");
    }

    #[test]
    fn retarget_merges_and_reports() {
        let mut e = parse(
            r#"{"kind":"site","name":"b","hosts":["a.org"],"backends":[{"backend":"m1"},{"backend":"m2","weight":3}]}"#,
        )
        .unwrap()
        .normalized()
        .unwrap();
        assert!(e.retarget(None, &Name::from("m9")));
        let Entity::Site(s) = &e else { panic!() };
        assert_eq!(s.backends.len(), 1);
        assert_eq!(s.backends[0].weight, 4);
        assert!(!e.retarget(None, &Name::from("m9")));
    }
}
