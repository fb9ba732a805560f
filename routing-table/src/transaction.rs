//! Transactions: a list of operations applied all together or not at all.
//!
//! [`apply`] is a pure function from a snapshot and a transaction to the
//! next snapshot and the list of [`Change`]s. Operations run in order on a
//! private copy; references (backends, members) and host ownership are
//! checked on the final state, so the order of puts within one transaction
//! does not matter. A rejected transaction returns a [`TxnError`] naming the
//! operation and the field, and the caller's snapshot is untouched.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entity::{BackendState, Entity, EntityKey, FieldError, Kind};
use crate::name::Name;
use crate::snapshot::Snapshot;

/// What an admin asks for: operations plus an optional version guard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    /// Apply only if the table is still at this version (else 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
    /// Free text kept in the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub ops: Vec<Op>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Insert or replace.
    Put {
        entity: Entity,
    },
    /// Insert; fails if the name is taken.
    Add {
        entity: Entity,
    },
    /// Remove; fails if absent or still referenced.
    Delete {
        kind: Kind,
        name: String,
    },
    /// Send all of a site's traffic to `to` (or only the share of `from`).
    MoveSite {
        site: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// Move everything a member owns to `to`; databases to `databases_to`
    /// when given (database servers are often separate).
    MoveMember {
        member: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        databases_to: Option<String>,
    },
    /// Move every route of backend `from` to `to`.
    EvacuateBackend {
        from: String,
        to: String,
    },
    SetBackendState {
        backend: String,
        state: BackendState,
    },
}

/// One entity before and after a transaction (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: Kind,
    pub name: Name,
    pub before: Option<Entity>,
    pub after: Option<Entity>,
}

impl Change {
    pub fn key(&self) -> EntityKey {
        EntityKey { kind: self.kind, name: self.name.clone() }
    }
}

/// Why a transaction was refused. `op` is the index in `ops`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    #[error("ops[{op}].{field}: {reason}")]
    Invalid { op: usize, field: String, reason: String },
    #[error("the table is at version {actual}, not {expected}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("the transaction has no operations")]
    Empty,
}

impl TxnError {
    fn at(op: usize, e: FieldError) -> Self {
        TxnError::Invalid { op, field: e.field, reason: e.reason }
    }

    fn new(op: usize, field: &str, reason: impl fmt::Display) -> Self {
        TxnError::Invalid { op, field: field.into(), reason: reason.to_string() }
    }
}

/// The result of a successful [`apply`].
#[derive(Debug, Clone)]
pub struct Applied {
    /// The new table, at `base.version() + 1`.
    pub snapshot: Snapshot,
    /// Every entity that differs, sorted by key.
    pub changes: Vec<Change>,
}

/// The most operations one transaction may carry (bulk loads excepted: the
/// store loader builds snapshots directly).
pub const MAX_OPS: usize = 1_000_000;

/// Validates `txn` against `base` and computes the next snapshot.
pub fn apply(base: &Snapshot, txn: &Transaction) -> Result<Applied, TxnError> {
    if let Some(expected) = txn.if_version {
        if expected != base.version() {
            return Err(TxnError::VersionConflict { expected, actual: base.version() });
        }
    }
    if txn.ops.is_empty() {
        return Err(TxnError::Empty);
    }
    if txn.ops.len() > MAX_OPS {
        return Err(TxnError::new(MAX_OPS, "ops", format!("more than {MAX_OPS} operations")));
    }
    let mut work = Work { snap: base.clone(), touched: BTreeMap::new(), claims: Vec::new() };
    for (i, op) in txn.ops.iter().enumerate() {
        work.op(i, op)?;
    }
    let changes = work.finish(true)?;
    let mut snapshot = work.snap;
    snapshot.version = base.version() + 1;
    Ok(Applied { snapshot, changes })
}

/// Builds a snapshot from stored entities (trusted to have been valid, but
/// checked again: a store may be damaged or hand-edited).
pub fn build(version: u64, entities: Vec<Entity>) -> Result<Snapshot, TxnError> {
    let mut work = Work { snap: Snapshot::empty(), touched: BTreeMap::new(), claims: Vec::new() };
    for (i, e) in entities.into_iter().enumerate() {
        work.put(i, e, false)?;
    }
    work.finish(false)?;
    let mut snapshot = work.snap;
    snapshot.version = version;
    Ok(snapshot)
}

struct Touched {
    before: Option<Entity>,
    op: usize,
}

struct Work {
    snap: Snapshot,
    touched: BTreeMap<EntityKey, Touched>,
    /// (host key, the site that claimed it, the site it displaced, op).
    claims: Vec<(crate::entity::HostKey, Name, Name, usize)>,
}

impl Work {
    fn op(&mut self, i: usize, op: &Op) -> Result<(), TxnError> {
        match op {
            Op::Put { entity } => self.put(i, entity.clone(), false),
            Op::Add { entity } => self.put(i, entity.clone(), true),
            Op::Delete { kind, name } => {
                let name = kind.normalize_name(name).map_err(|e| TxnError::new(i, "name", e))?;
                let key = EntityKey { kind: *kind, name };
                if !self.snap.contains(key.kind, &key.name) {
                    return Err(TxnError::new(i, "name", format!("no {key}")));
                }
                self.touch(i, &key);
                self.snap.delete(&key);
                Ok(())
            }
            Op::MoveSite { site, to, from } => {
                let key = self.existing(i, "site", Kind::Site, site)?;
                let to = self.backend_name(i, "to", to)?;
                let from = from.as_deref().map(|f| self.backend_name(i, "from", f)).transpose()?;
                self.retarget(i, &key, from.as_deref(), &to);
                Ok(())
            }
            Op::MoveMember { member, to, databases_to } => {
                let key = self.existing(i, "member", Kind::Member, member)?;
                let to = self.backend_name(i, "to", to)?;
                let db_to = databases_to.as_deref().map(|d| self.backend_name(i, "databases_to", d)).transpose()?;
                let owned: Vec<EntityKey> =
                    self.snap.member_entities(&key.name).map(|s| s.iter().cloned().collect()).unwrap_or_default();
                for k in owned {
                    let target = if k.kind == Kind::Database { db_to.as_ref().unwrap_or(&to) } else { &to };
                    self.retarget(i, &k, None, target);
                }
                Ok(())
            }
            Op::EvacuateBackend { from, to } => {
                let from = self.existing(i, "from", Kind::Backend, from)?.name;
                let to = self.backend_name(i, "to", to)?;
                for k in self.snap.users_of_backend(&from) {
                    self.retarget(i, &k, Some(&from), &to);
                }
                Ok(())
            }
            Op::SetBackendState { backend, state } => {
                let key = self.existing(i, "backend", Kind::Backend, backend)?;
                let Some(Entity::Backend(mut b)) = self.snap.get(&key) else { unreachable!("checked above") };
                b.state = *state;
                self.touch(i, &key);
                self.snap.put(Entity::Backend(b));
                Ok(())
            }
        }
    }

    fn put(&mut self, i: usize, entity: Entity, add: bool) -> Result<(), TxnError> {
        let prefix = entity.kind().as_str();
        let entity = entity
            .normalized()
            .map_err(|e| TxnError::at(i, FieldError { field: format!("entity.{}", e.field), reason: e.reason }))?;
        let key = entity.key();
        if add && self.snap.contains(key.kind, &key.name) {
            return Err(TxnError::new(i, "entity.name", format!("{prefix} `{}` already exists", key.name)));
        }
        if let Entity::Site(site) = &entity {
            for host in site.host_keys() {
                if let Some(owner) = self.snap.host_owner(&host) {
                    if owner.name != site.name {
                        self.claims.push((host, site.name.clone(), owner.name.clone(), i));
                    }
                }
            }
        }
        self.touch(i, &key);
        self.snap.put(entity);
        Ok(())
    }

    fn retarget(&mut self, i: usize, key: &EntityKey, from: Option<&str>, to: &Name) {
        let Some(mut entity) = self.snap.get(key) else {
            return;
        };
        if entity.retarget(from, to) {
            self.touch(i, key);
            self.snap.put(entity);
        }
    }

    fn existing(&self, i: usize, field: &str, kind: Kind, raw: &str) -> Result<EntityKey, TxnError> {
        let name = kind.normalize_name(raw).map_err(|e| TxnError::new(i, field, e))?;
        if !self.snap.contains(kind, &name) {
            return Err(TxnError::new(i, field, format!("no {kind} `{name}`")));
        }
        Ok(EntityKey { kind, name })
    }

    fn backend_name(&self, i: usize, field: &str, raw: &str) -> Result<Name, TxnError> {
        Ok(self.existing(i, field, Kind::Backend, raw)?.name)
    }

    fn touch(&mut self, i: usize, key: &EntityKey) {
        match self.touched.get_mut(key) {
            Some(t) => t.op = i,
            None => {
                let before = self.snap.get(key);
                self.touched.insert(key.clone(), Touched { before, op: i });
            }
        }
    }

    /// Final-state checks over what this transaction touched, and (when
    /// asked) the list of changes, built from the same copy of each entity.
    fn finish(&mut self, want_changes: bool) -> Result<Vec<Change>, TxnError> {
        let mut changes = Vec::new();
        for (key, t) in std::mem::take(&mut self.touched) {
            let after = self.snap.get(&key);
            match &after {
                Some(entity) => self.check_refs(t.op, entity)?,
                None => self.check_unused(t.op, &key)?,
            }
            if want_changes && after != t.before {
                changes.push(Change { kind: key.kind, name: key.name, before: t.before, after });
            }
        }
        self.settle_claims()?;
        Ok(changes)
    }

    /// Settles every host a site of this transaction took from another:
    /// at the end, at most one of the sites involved may still list it
    /// (else the later claim is refused), and the host index points at
    /// that one. A claim undone later in the same transaction (the
    /// claiming site deleted, or the displaced site put again) must leave
    /// the host with the site that still lists it.
    fn settle_claims(&mut self) -> Result<(), TxnError> {
        let claims = std::mem::take(&mut self.claims);
        let mut hosts: BTreeMap<&crate::entity::HostKey, Vec<(&Name, &Name, usize)>> = BTreeMap::new();
        for (host, claimer, displaced, op) in &claims {
            hosts.entry(host).or_default().push((claimer, displaced, *op));
        }
        for (host, claims) in hosts {
            let mut names: Vec<&Name> = claims.iter().flat_map(|(c, d, _)| [*c, *d]).collect();
            names.sort();
            names.dedup();
            let holders: Vec<Arc<crate::Site>> = names
                .iter()
                .filter_map(|n| self.snap.site(n))
                .filter(|s| s.host_keys().any(|h| &h == host))
                .cloned()
                .collect();
            match holders.as_slice() {
                [] => {}
                [only] => self.snap.rehost(host, Arc::clone(only)),
                _ => {
                    // The last claim by a site that still lists the host.
                    let listed = |n: &Name| holders.iter().any(|s| &s.name == n);
                    let (claimer, op) = claims
                        .iter()
                        .rev()
                        .find(|(c, _, _)| listed(c))
                        .map_or((claims[0].0, claims[0].2), |c| (c.0, c.2));
                    let other = holders.iter().find(|s| &s.name != claimer).map_or("", |s| &*s.name);
                    return Err(TxnError::new(
                        op,
                        "entity.hosts",
                        format!("`{host}` already belongs to site `{other}`"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_refs(&self, op: usize, entity: &Entity) -> Result<(), TxnError> {
        for b in entity.backends() {
            if self.snap.backend(b).is_none() {
                return Err(TxnError::new(op, "entity", format!("{} names unknown backend `{b}`", entity.key())));
            }
        }
        if let Some(m) = entity.member() {
            if self.snap.member(m).is_none() {
                return Err(TxnError::new(op, "entity.member", format!("no member `{m}`")));
            }
        }
        Ok(())
    }

    fn check_unused(&self, op: usize, key: &EntityKey) -> Result<(), TxnError> {
        let users = match key.kind {
            Kind::Backend => self.snap.backend_ref_count(&key.name) as usize,
            Kind::Member => self.snap.member_entities(&key.name).map_or(0, |s| s.len()),
            _ => 0,
        };
        if users > 0 {
            return Err(TxnError::new(
                op,
                "name",
                format!("{key} is still used by {users} route(s); move or delete them first"),
            ));
        }
        Ok(())
    }
}

/// Folds consecutive changes into the net change per entity (first
/// `before`, last `after`), dropping entities that ended where they began.
pub fn compose(changes: impl IntoIterator<Item = Change>) -> Vec<Change> {
    let mut net: BTreeMap<EntityKey, Change> = BTreeMap::new();
    for c in changes {
        match net.get_mut(&c.key()) {
            Some(n) => n.after = c.after,
            None => drop(net.insert(c.key(), c)),
        }
    }
    net.into_values().filter(|c| c.before != c.after).collect()
}

/// The operations that undo `net` (a [`compose`]d diff from the target
/// version to now): every entity goes back to its `before`.
pub fn undo_ops(net: &[Change]) -> Vec<Op> {
    net.iter()
        .map(|c| match &c.before {
            Some(entity) => Op::Put { entity: entity.clone() },
            None => Op::Delete { kind: c.kind, name: c.name.to_string() },
        })
        .collect()
}

/// How many entities of each kind a list of changes touches (for logs).
pub fn summary(changes: &[Change]) -> BTreeMap<Kind, usize> {
    let mut out = BTreeMap::new();
    for c in changes {
        *out.entry(c.kind).or_insert(0) += 1;
    }
    out
}
