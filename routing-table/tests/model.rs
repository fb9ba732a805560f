//! Property test: after any sequence of transactions, the table agrees with
//! a naive model (a sorted map of entities, checked and searched by brute
//! force) on which transactions are accepted and on every lookup.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use routing_table::entity::{Backend, Database, MailDomain, MailLogin, Member, Site, SiteBackend};
use routing_table::transaction::apply;
use routing_table::{Entity, EntityKey, Kind, Op, Snapshot, Transaction};

const HOSTS: [&str; 6] = ["a.org", "b.org", "*.org", "*.a.org", "x.b.org", "*.b.org"];

fn backend(i: u8) -> Entity {
    Entity::Backend(Backend {
        name: format!("b{i}").into(),
        addresses: vec![format!("10.0.0.{i}").parse().unwrap()],
        state: Default::default(),
    })
}

fn site(i: u8, hosts: Vec<usize>, backends: Vec<u8>, member: Option<u8>) -> Entity {
    let mut hs: Vec<&str> = hosts.into_iter().map(|h| HOSTS[h]).collect();
    hs.sort();
    hs.dedup();
    let backends = backends
        .into_iter()
        .map(|b| SiteBackend { backend: format!("b{b}").into(), port: 80, weight: 1, proxy_protocol: false })
        .collect();
    let mut site = Site::new(&format!("s{i}"), &hs, backends);
    site.member = member.map(|m| format!("m{m}").into());
    Entity::Site(site)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let b = 0u8..4;
    let m = proptest::option::of(0u8..3);
    prop_oneof![
        b.clone().prop_map(|i| Op::Put { entity: backend(i) }),
        (0u8..3).prop_map(|i| Op::Put { entity: Entity::Member(Member { name: format!("m{i}").into(), note: None }) }),
        (
            0u8..5,
            proptest::collection::vec(0..HOSTS.len(), 1..3),
            proptest::collection::vec(b.clone(), 1..3),
            m.clone()
        )
            .prop_map(|(i, h, bs, m)| Op::Put { entity: site(i, h, bs, m) }),
        (0u8..5, proptest::collection::vec(0..HOSTS.len(), 1..3), b.clone(), m.clone())
            .prop_map(|(i, h, bk, m)| Op::Add { entity: site(i, h, vec![bk], m) }),
        (0u8..3, b.clone(), m.clone()).prop_map(|(i, bk, m)| Op::Put {
            entity: Entity::MailLogin(MailLogin {
                user: format!("u{i}").into(),
                member: m.map(|m| format!("m{m}").into()),
                backend: format!("b{bk}").into()
            })
        }),
        (0u8..2, b.clone(), b.clone(), m.clone()).prop_map(|(i, bk, o, m)| Op::Put {
            entity: Entity::MailDomain(MailDomain {
                domain: format!("d{i}.org").into(),
                member: m.map(|m| format!("m{m}").into()),
                backend: format!("b{bk}").into(),
                overrides: [(Arc::from("vip"), Arc::from(format!("b{o}")))].into_iter().collect(),
            })
        }),
        (0u8..3, b.clone(), m.clone()).prop_map(|(i, bk, m)| Op::Put {
            entity: Entity::Database(Database {
                name: format!("db{i}").into(),
                member: m.map(|m| format!("m{m}").into()),
                server: format!("b{bk}").into()
            })
        }),
        (
            prop_oneof![
                Just(Kind::Backend),
                Just(Kind::Member),
                Just(Kind::Site),
                Just(Kind::MailLogin),
                Just(Kind::Database)
            ],
            0u8..5
        )
            .prop_map(|(kind, i)| {
                let prefix = match kind {
                    Kind::Backend => "b",
                    Kind::Member => "m",
                    Kind::Site => "s",
                    Kind::MailLogin => "u",
                    _ => "db",
                };
                Op::Delete { kind, name: format!("{prefix}{i}") }
            }),
        (0u8..5, b.clone(), proptest::option::of(b.clone())).prop_map(|(s, to, from)| {
            Op::MoveSite { site: format!("s{s}"), to: format!("b{to}"), from: from.map(|f| format!("b{f}")) }
        }),
        (0u8..3, b.clone(), proptest::option::of(b.clone())).prop_map(|(mm, to, db)| {
            Op::MoveMember { member: format!("m{mm}"), to: format!("b{to}"), databases_to: db.map(|d| format!("b{d}")) }
        }),
        (b.clone(), b.clone()).prop_map(|(f, t)| Op::EvacuateBackend { from: format!("b{f}"), to: format!("b{t}") }),
    ]
}

/// The naive model: entities in a sorted map; every rule checked by a
/// full scan of the final state.
#[derive(Clone, Default, PartialEq, Debug)]
struct Model(BTreeMap<EntityKey, Entity>);

impl Model {
    fn has(&self, kind: Kind, name: &str) -> bool {
        self.0.contains_key(&EntityKey { kind, name: name.into() })
    }

    fn apply(&self, txn: &Transaction) -> Option<Model> {
        let mut m = self.clone();
        for op in &txn.ops {
            m.op(op)?;
        }
        m.valid().then_some(m)
    }

    fn op(&mut self, op: &Op) -> Option<()> {
        match op {
            Op::Put { entity } => drop(self.0.insert(entity.key(), entity.clone().normalized().ok()?)),
            Op::Add { entity } => {
                if self.0.contains_key(&entity.key()) {
                    return None;
                }
                self.0.insert(entity.key(), entity.clone().normalized().ok()?);
            }
            Op::Delete { kind, name } => drop(self.0.remove(&EntityKey { kind: *kind, name: name.as_str().into() })?),
            Op::MoveSite { site, to, from } => {
                if !self.has(Kind::Site, site)
                    || !self.has(Kind::Backend, to)
                    || from.as_ref().is_some_and(|f| !self.has(Kind::Backend, f))
                {
                    return None;
                }
                let key = EntityKey { kind: Kind::Site, name: site.as_str().into() };
                self.0.get_mut(&key)?.retarget(from.as_deref(), &to.as_str().into());
            }
            Op::MoveMember { member, to, databases_to } => {
                if !self.has(Kind::Member, member)
                    || !self.has(Kind::Backend, to)
                    || databases_to.as_ref().is_some_and(|d| !self.has(Kind::Backend, d))
                {
                    return None;
                }
                for e in self.0.values_mut() {
                    if e.member().is_some_and(|m| &**m == member) {
                        let target = if e.kind() == Kind::Database { databases_to.as_ref().unwrap_or(to) } else { to };
                        e.retarget(None, &target.as_str().into());
                    }
                }
            }
            Op::EvacuateBackend { from, to } => {
                if !self.has(Kind::Backend, from) || !self.has(Kind::Backend, to) {
                    return None;
                }
                for e in self.0.values_mut() {
                    e.retarget(Some(from), &to.as_str().into());
                }
            }
            Op::SetBackendState { .. } => unreachable!("not generated"),
        }
        Some(())
    }

    fn valid(&self) -> bool {
        let mut hosts = BTreeMap::new();
        for e in self.0.values() {
            if e.backends().iter().any(|b| !self.has(Kind::Backend, b))
                || e.member().is_some_and(|m| !self.has(Kind::Member, m))
            {
                return false;
            }
            if let Entity::Site(s) = e {
                for h in s.hosts() {
                    if hosts.insert(h.clone(), s.name.clone()).is_some() {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn lookup(&self, host: &str) -> Option<String> {
        let sites = || self.0.values().filter_map(|e| if let Entity::Site(s) = e { Some(s) } else { None });
        if let Some(s) = sites().find(|s| s.hosts().iter().any(|h| &**h == host)) {
            return Some(s.name.to_string());
        }
        let labels: Vec<&str> = host.split('.').collect();
        for i in 1..labels.len() {
            let pattern = format!("*.{}", labels[i..].join("."));
            if let Some(s) = sites().find(|s| s.hosts().iter().any(|h| **h == *pattern)) {
                return Some(s.name.to_string());
            }
        }
        None
    }
}

fn entities_json(s: &Snapshot) -> String {
    serde_json::to_string(&s.entities()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn table_agrees_with_naive_model(txns in proptest::collection::vec(proptest::collection::vec(op_strategy(), 1..4), 1..25)) {
        let mut snap = Snapshot::empty();
        let mut model = Model::default();
        for ops in txns {
            let txn = Transaction { ops, ..Transaction::default() };
            let before = entities_json(&snap);
            let got = apply(&snap, &txn);
            let want = model.apply(&txn);
            prop_assert_eq!(got.is_ok(), want.is_some(), "txn {:?}: table {:?}", txn, got.as_ref().err());
            // Whatever happened, the base snapshot is untouched.
            prop_assert_eq!(entities_json(&snap), before);
            if let (Ok(applied), Some(next)) = (got, want) {
                prop_assert_eq!(applied.snapshot.version(), snap.version() + 1);
                snap = applied.snapshot;
                model = next;
            }
            let got_entities: Vec<Entity> = snap.entities();
            let want_entities: Vec<Entity> = model.0.values().cloned().collect();
            prop_assert_eq!(got_entities, want_entities);
            for host in ["a.org", "b.org", "x.a.org", "y.x.a.org", "x.b.org", "z.b.org", "c.org", "A.ORG.", "org"] {
                let got = snap.site_for_host(host).map(|m| m.site.name.to_string());
                prop_assert_eq!(got, model.lookup(host.to_ascii_lowercase().trim_end_matches('.')), "host {}", host);
            }
            for user in ["u0", "U1", "u2"] {
                let got = snap.mail_backend(user).map(|b| b.name.to_string());
                let want = model.0.get(&EntityKey { kind: Kind::MailLogin, name: user.to_ascii_lowercase().into() })
                    .map(|e| if let Entity::MailLogin(l) = e { l.backend.to_string() } else { unreachable!() });
                prop_assert_eq!(got, want);
            }
            for db in ["db0", "db1", "db2"] {
                let got = snap.database_server(db).map(|b| b.name.to_string());
                let want = model.0.get(&EntityKey { kind: Kind::Database, name: db.into() })
                    .map(|e| if let Entity::Database(d) = e { d.server.to_string() } else { unreachable!() });
                prop_assert_eq!(got, want);
            }
            // Indexes agree with a scan.
            for b in 0..4 {
                let name = format!("b{b}");
                let refs: usize = model.0.values().map(|e| e.backends().iter().filter(|x| &****x == name.as_str()).count()).sum();
                prop_assert_eq!(snap.backend_ref_count(&name) as usize, refs);
            }
        }
    }
}
