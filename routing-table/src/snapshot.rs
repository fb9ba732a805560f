//! One immutable version of the routing table, and the lookups every
//! protocol makes against it.
//!
//! A snapshot is cheap to clone (each map is a [`ShardedMap`]); the writer
//! clones the current one, changes the copy through `Snapshot::put` and
//! `Snapshot::delete`, and publishes it. Readers never see a change half
//! made.

use std::sync::Arc;

use imbl::OrdSet;
use serde::Serialize;

use crate::entity::{
    Backend, Database, DnsName, Entity, EntityKey, HostKey, Kind, MailDomain, MailLogin, Member, RefTo, SftpLogin, Site,
};
use crate::name::{HostBuf, Name};
use crate::sharded::{Named, ShardedMap};

/// The routing table at one version.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub(crate) version: u64,
    backends: ShardedMap<Arc<Backend>>,
    members: ShardedMap<Arc<Member>>,
    sites: ShardedMap<Arc<Site>>,
    mail_logins: ShardedMap<Arc<MailLogin>>,
    mail_domains: ShardedMap<Arc<MailDomain>>,
    sftp_logins: ShardedMap<Arc<SftpLogin>>,
    databases: ShardedMap<Arc<Database>>,
    dns_names: ShardedMap<Arc<DnsName>>,
    /// Exact host (and alias) → site.
    hosts: ShardedMap<(Name, Arc<Site>)>,
    /// Wildcard suffix (`example.org` for `*.example.org`) → site.
    wildcards: ShardedMap<(Name, Arc<Site>)>,
    /// Backend → number of references to it from routes.
    backend_refs: ShardedMap<(Name, u32)>,
    /// Member → keys of everything it owns.
    member_index: ShardedMap<(Name, OrdSet<EntityKey>)>,
    /// Each proper ancestor of an owner name in the internal zone (relative
    /// to the zone: `mysql` for `db1.mysql`) → how many owners sit below it.
    /// dnsd tells an empty non-terminal (NODATA) from a missing name
    /// (NXDOMAIN) with it.
    dns_parents: ShardedMap<(Name, u32)>,
}

/// A site found for a host name.
#[derive(Debug, Clone, Copy)]
pub struct HostMatch<'a> {
    pub site: &'a Arc<Site>,
    /// The host is one of the site's aliases: redirect to its first host.
    pub alias: bool,
    /// Matched through a `*.` pattern.
    pub wildcard: bool,
}

/// Where mail for one recipient goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient<'a> {
    Routed(&'a Backend),
    /// The domain is ours but the backend it names is missing (cannot happen
    /// in a validated snapshot; kept so callers answer 451, not panic).
    Unavailable,
    /// Not a domain we accept mail for.
    UnknownDomain,
}

/// Number of entities of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub backends: usize,
    pub members: usize,
    pub sites: usize,
    pub hosts: usize,
    pub mail_logins: usize,
    pub mail_domains: usize,
    pub sftp_logins: usize,
    pub databases: usize,
    pub dns_names: usize,
}

impl Snapshot {
    /// An empty table at version 0.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn counts(&self) -> Counts {
        Counts {
            backends: self.backends.len(),
            members: self.members.len(),
            sites: self.sites.len(),
            hosts: self.hosts.len() + self.wildcards.len(),
            mail_logins: self.mail_logins.len(),
            mail_domains: self.mail_domains.len(),
            sftp_logins: self.sftp_logins.len(),
            databases: self.databases.len(),
            dns_names: self.dns_names.len(),
        }
    }

    // ----- lookups (the hot path: no allocation) -----

    /// The site serving `host` (as sent by a client: any case, maybe a
    /// trailing dot, no port). Exact names win; then the longest wildcard.
    /// ASCII input (what HTTP clients send) is looked up without allocating;
    /// a Unicode name is converted to punycode first.
    pub fn site_for_host(&self, host: &str) -> Option<HostMatch<'_>> {
        match HostBuf::new(host) {
            Some(buf) => self.site_for_ascii_host(buf.as_str()),
            None => self.site_for_ascii_host(&crate::name::host(host).ok()?),
        }
    }

    fn site_for_ascii_host(&self, host: &str) -> Option<HostMatch<'_>> {
        if let Some((_, site)) = self.hosts.get(host) {
            return Some(HostMatch { site, alias: is_alias(site, host), wildcard: false });
        }
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some((_, site)) = self.wildcards.get(suffix) {
                return Some(HostMatch { site, alias: is_wildcard_alias(site, suffix), wildcard: true });
            }
            rest = suffix;
        }
        None
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.get(name)
    }

    pub fn member(&self, name: &str) -> Option<&Arc<Member>> {
        self.members.get(name)
    }

    pub fn site(&self, name: &str) -> Option<&Arc<Site>> {
        self.sites.get(name)
    }

    /// The login for an IMAP/POP3/submission user, case-insensitively.
    pub fn mail_login(&self, user: &str) -> Option<&Arc<MailLogin>> {
        self.mail_logins.get(HostBuf::new(user)?.as_str())
    }

    /// The backend holding a mail user's mailbox.
    pub fn mail_backend(&self, user: &str) -> Option<&Arc<Backend>> {
        self.backends.get(&self.mail_login(user)?.backend)
    }

    /// The mail domain, case-insensitively; a Unicode domain (SMTPUTF8) is
    /// converted to punycode first.
    pub fn mail_domain(&self, domain: &str) -> Option<&Arc<MailDomain>> {
        match HostBuf::new(domain) {
            Some(buf) => self.mail_domains.get(buf.as_str()),
            None => self.mail_domains.get(&crate::name::host(domain).ok()?),
        }
    }

    /// Routes an inbound recipient `local@domain`: a per-address override
    /// (also tried without a `+detail`), else the domain's backend.
    pub fn recipient(&self, address: &str) -> Recipient<'_> {
        let Some((local, domain)) = address.rsplit_once('@') else { return Recipient::UnknownDomain };
        let Some(d) = self.mail_domain(domain) else { return Recipient::UnknownDomain };
        let Some(local) = HostBuf::new(local) else { return Recipient::UnknownDomain };
        let local = local.as_str();
        let base = local.split_once('+').map_or(local, |(b, _)| b);
        let backend = d.overrides.get(local).or_else(|| d.overrides.get(base)).unwrap_or(&d.backend);
        self.backends.get(backend).map_or(Recipient::Unavailable, |b| Recipient::Routed(b))
    }

    pub fn sftp_login(&self, user: &str) -> Option<&Arc<SftpLogin>> {
        self.sftp_logins.get(HostBuf::new(user)?.as_str())
    }

    pub fn database(&self, name: &str) -> Option<&Arc<Database>> {
        self.databases.get(HostBuf::new(name)?.as_str())
    }

    /// The server holding database `name`.
    pub fn database_server(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.get(&self.database(name)?.server)
    }

    pub fn dns_name(&self, name: &str) -> Option<&Arc<DnsName>> {
        self.dns_names.get(HostBuf::new(name)?.as_str())
    }

    /// Whether any owner name of the internal zone sits below `name` (given
    /// relative to the zone, lowercase, like `mysql` or `_tcp.host`): such a
    /// name exists even when nothing is stored at it (an empty non-terminal).
    pub fn dns_has_children(&self, name: &str) -> bool {
        self.dns_parents.contains_key(name)
    }

    /// Every database, in no particular order (for zone transfers).
    pub fn databases(&self) -> impl Iterator<Item = &Arc<Database>> {
        self.databases.iter()
    }

    /// Every backend, in no particular order (for zone transfers).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.iter()
    }

    /// Every extra DNS name, in no particular order (for zone transfers).
    pub fn dns_names(&self) -> impl Iterator<Item = &Arc<DnsName>> {
        self.dns_names.iter()
    }

    /// How many routes name this backend.
    pub fn backend_ref_count(&self, backend: &str) -> u32 {
        self.backend_refs.get(backend).map_or(0, |e| e.1)
    }

    /// Keys of everything `member` owns.
    pub fn member_entities(&self, member: &str) -> Option<&OrdSet<EntityKey>> {
        self.member_index.get(member).map(|e| &e.1)
    }

    // ----- whole-entity access, for the control API and the writer -----

    /// The entity with this key, cloned out of the snapshot.
    pub fn get(&self, key: &EntityKey) -> Option<Entity> {
        self.get_by(key.kind, &key.name)
    }

    pub fn get_by(&self, kind: Kind, name: &str) -> Option<Entity> {
        let e = match kind {
            Kind::Backend => Entity::Backend((**self.backends.get(name)?).clone()),
            Kind::Member => Entity::Member((**self.members.get(name)?).clone()),
            Kind::Site => Entity::Site((**self.sites.get(name)?).clone()),
            Kind::MailLogin => Entity::MailLogin((**self.mail_logins.get(name)?).clone()),
            Kind::MailDomain => Entity::MailDomain((**self.mail_domains.get(name)?).clone()),
            Kind::SftpLogin => Entity::SftpLogin((**self.sftp_logins.get(name)?).clone()),
            Kind::Database => Entity::Database((**self.databases.get(name)?).clone()),
            Kind::DnsName => Entity::DnsName((**self.dns_names.get(name)?).clone()),
        };
        Some(e)
    }

    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Backend => self.backends.contains_key(name),
            Kind::Member => self.members.contains_key(name),
            Kind::Site => self.sites.contains_key(name),
            Kind::MailLogin => self.mail_logins.contains_key(name),
            Kind::MailDomain => self.mail_domains.contains_key(name),
            Kind::SftpLogin => self.sftp_logins.contains_key(name),
            Kind::Database => self.databases.contains_key(name),
            Kind::DnsName => self.dns_names.contains_key(name),
        }
    }

    /// Every site, in no particular order.
    pub fn sites(&self) -> impl Iterator<Item = &Arc<Site>> {
        self.sites.iter()
    }

    /// Names of every entity of `kind`, sorted.
    pub fn names(&self, kind: Kind) -> Vec<Name> {
        fn keys<T: Named>(m: &ShardedMap<Arc<T>>) -> Vec<Name> {
            m.iter().map(|e| e.name().clone()).collect()
        }
        let mut names = match kind {
            Kind::Backend => keys(&self.backends),
            Kind::Member => keys(&self.members),
            Kind::Site => keys(&self.sites),
            Kind::MailLogin => keys(&self.mail_logins),
            Kind::MailDomain => keys(&self.mail_domains),
            Kind::SftpLogin => keys(&self.sftp_logins),
            Kind::Database => keys(&self.databases),
            Kind::DnsName => keys(&self.dns_names),
        };
        names.sort_unstable();
        names
    }

    /// Every entity, sorted by kind then name.
    pub fn entities(&self) -> Vec<Entity> {
        Kind::ALL
            .into_iter()
            .flat_map(|kind| self.names(kind).into_iter().filter_map(move |n| self.get_by(kind, &n)))
            .collect()
    }

    // ----- mutation (only through the writer, on a private copy) -----

    /// Inserts or replaces a normalised entity, keeping every index right.
    /// Returns the entity it replaced. Hosts claimed by another site are
    /// taken over; the caller checks that with [`Snapshot::host_owner`].
    pub(crate) fn put(&mut self, mut entity: Entity) -> Option<Entity> {
        let old = self.delete(&entity.key());
        self.intern(&mut entity);
        self.index(&entity, 1);
        match entity {
            Entity::Backend(e) => drop(self.backends.insert(Arc::new(e))),
            Entity::Member(e) => drop(self.members.insert(Arc::new(e))),
            Entity::Site(e) => self.put_site(Arc::new(e)),
            Entity::MailLogin(e) => drop(self.mail_logins.insert(Arc::new(e))),
            Entity::MailDomain(e) => drop(self.mail_domains.insert(Arc::new(e))),
            Entity::SftpLogin(e) => drop(self.sftp_logins.insert(Arc::new(e))),
            Entity::Database(e) => drop(self.databases.insert(Arc::new(e))),
            Entity::DnsName(e) => drop(self.dns_names.insert(Arc::new(e))),
        }
        old
    }

    /// Points references at the table's own copy of each backend and member
    /// name, so a million routes to `mosh12` share one string.
    fn intern(&self, entity: &mut Entity) {
        entity.refs_mut(|to, name| {
            let own = match to {
                RefTo::Backend => self.backends.get(name).map(|b| &b.name),
                RefTo::Member => self.members.get(name).map(|m| &m.name),
            };
            if let Some(own) = own {
                *name = own.clone();
            }
        });
    }

    fn put_site(&mut self, site: Arc<Site>) {
        for key in site.host_keys() {
            let map = if key.wildcard { &mut self.wildcards } else { &mut self.hosts };
            map.insert((key.name, site.clone()));
        }
        self.sites.insert(site);
    }

    /// Removes an entity, keeping every index right; returns it.
    pub(crate) fn delete(&mut self, key: &EntityKey) -> Option<Entity> {
        let name = &*key.name;
        let old = match key.kind {
            Kind::Backend => Entity::Backend(unwrap_arc(self.backends.remove(name)?)),
            Kind::Member => Entity::Member(unwrap_arc(self.members.remove(name)?)),
            Kind::Site => {
                let site = self.sites.remove(name)?;
                self.unhost(&site);
                Entity::Site(unwrap_arc(site))
            }
            Kind::MailLogin => Entity::MailLogin(unwrap_arc(self.mail_logins.remove(name)?)),
            Kind::MailDomain => Entity::MailDomain(unwrap_arc(self.mail_domains.remove(name)?)),
            Kind::SftpLogin => Entity::SftpLogin(unwrap_arc(self.sftp_logins.remove(name)?)),
            Kind::Database => Entity::Database(unwrap_arc(self.databases.remove(name)?)),
            Kind::DnsName => Entity::DnsName(unwrap_arc(self.dns_names.remove(name)?)),
        };
        self.index(&old, -1);
        Some(old)
    }

    /// Drops the host entries that still point at `site` (another site may
    /// have taken some over in the same transaction).
    fn unhost(&mut self, site: &Arc<Site>) {
        for key in site.host_keys() {
            let map = if key.wildcard { &mut self.wildcards } else { &mut self.hosts };
            if map.get(&key.name).is_some_and(|(_, owner)| owner.name == site.name) {
                map.remove(&key.name);
            }
        }
    }

    /// Points a host pattern at `site` (settling a transaction's claims).
    pub(crate) fn rehost(&mut self, key: &HostKey, site: Arc<Site>) {
        let map = if key.wildcard { &mut self.wildcards } else { &mut self.hosts };
        if !map.get(&key.name).is_some_and(|(_, owner)| Arc::ptr_eq(owner, &site)) {
            map.insert((key.name.clone(), site));
        }
    }

    /// The site that currently serves this host pattern.
    pub(crate) fn host_owner(&self, key: &HostKey) -> Option<&Arc<Site>> {
        let map = if key.wildcard { &self.wildcards } else { &self.hosts };
        map.get(&key.name).map(|(_, site)| site)
    }

    fn index(&mut self, entity: &Entity, delta: i64) {
        if let Some(owner) = dns_owner(entity) {
            // Every proper suffix: `a.b.c` counts for `b.c` and `c`.
            let mut rest: &str = &owner;
            while let Some((_, parent)) = rest.split_once('.') {
                let count = i64::from(self.dns_parents.get(parent).map_or(0, |e| e.1)) + delta;
                if count > 0 {
                    self.dns_parents.insert((parent.into(), count as u32));
                } else {
                    self.dns_parents.remove(parent);
                }
                rest = parent;
            }
        }
        for backend in entity.backends() {
            let count = i64::from(self.backend_ref_count(backend)) + delta;
            if count > 0 {
                self.backend_refs.insert((backend.clone(), count as u32));
            } else {
                self.backend_refs.remove(backend);
            }
        }
        if let Some(member) = entity.member() {
            let mut set = self.member_entities(member).cloned().unwrap_or_default();
            if delta > 0 {
                set.insert(entity.key());
            } else {
                set.remove(&entity.key());
            }
            if set.is_empty() {
                self.member_index.remove(member);
            } else {
                self.member_index.insert((member.clone(), set));
            }
        }
    }

    /// Every entity that routes to `backend` (a scan of the routes: used by
    /// evacuation, which is rare and touches that many routes anyway).
    pub(crate) fn users_of_backend(&self, backend: &str) -> Vec<EntityKey> {
        fn scan<V: Named>(out: &mut Vec<EntityKey>, kind: Kind, m: &ShardedMap<Arc<V>>, uses: impl Fn(&V) -> bool) {
            out.extend(m.iter().filter(|v| uses(v)).map(|v| EntityKey { kind, name: v.name().clone() }));
        }
        let mut out = Vec::new();
        if self.backend_ref_count(backend) == 0 {
            return out;
        }
        scan(&mut out, Kind::Site, &self.sites, |s| s.backends.iter().any(|b| &*b.backend == backend));
        scan(&mut out, Kind::MailLogin, &self.mail_logins, |l| &*l.backend == backend);
        scan(&mut out, Kind::MailDomain, &self.mail_domains, |d| {
            &*d.backend == backend || d.overrides.values().any(|b| &**b == backend)
        });
        scan(&mut out, Kind::SftpLogin, &self.sftp_logins, |l| &*l.backend == backend);
        scan(&mut out, Kind::Database, &self.databases, |d| &*d.server == backend);
        out.sort();
        out
    }
}

fn is_alias(site: &Site, host: &str) -> bool {
    site.aliases().iter().any(|a| &**a == host)
}

fn is_wildcard_alias(site: &Site, suffix: &str) -> bool {
    site.aliases().iter().any(|a| a.strip_prefix("*.") == Some(suffix))
}

fn unwrap_arc<T: Clone>(a: Arc<T>) -> T {
    Arc::unwrap_or_clone(a)
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("version", &self.version).field("counts", &self.counts()).finish()
    }
}

/// The owner name an entity gives the internal zone, relative to the zone:
/// `<db>.mysql` for a database, the backend's name, the extra name itself.
fn dns_owner(entity: &Entity) -> Option<std::borrow::Cow<'_, str>> {
    match entity {
        Entity::Database(d) => Some(format!("{}.mysql", d.name).into()),
        Entity::Backend(b) => Some((&*b.name).into()),
        Entity::DnsName(n) if &*n.name != "@" => Some((&*n.name).into()),
        _ => None,
    }
}
