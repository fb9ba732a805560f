//! The entities of the routing table, as admins write them in JSON and as
//! the store keeps them.
//!
//! Every entity is checked and normalised by [`Entity::normalized`] before it
//! enters a snapshot; a type that has been through it holds no raw input.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::name::{self, Name, NameError};
use crate::sharded::Named;

mod site;

use site::dedup_backends;
pub use site::{
    CachePolicy, HostKey, Limits, Protection, Site, SiteBackend, SitePolicy, SiteSpec, TlsPolicy, MAX_HEADER_BYTES,
    MAX_SITE_NAMES, MIN_HEADER_BYTES,
};

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
            fn name(&self) -> &Name {
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

impl Backend {
    fn normalized(self) -> Result<Backend, FieldError> {
        if self.addresses.is_empty() {
            return Err(FieldError::new("addresses", "needs at least one address"));
        }
        Ok(Backend { name: field("name", name::ident(&self.name))?, ..self })
    }
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
    use std::sync::Arc;

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
        let e = parse(
            r#"{"kind":"site","name":"b","hosts":["a.org"],"backends":[{"backend":"m"}],
                "policy":{"limits":{"max_header_bytes":100}}}"#,
        )
        .unwrap()
        .normalized()
        .unwrap_err();
        assert_eq!(e.field, "policy.limits.max_header_bytes");
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
