//! The live table over a real SQLite store: commits survive a reopen,
//! history, diff and rollback, version guards, subscribers, and the errors
//! an admin sees.

use routing_table::{ApplyError, Kind, Op, Recipient, SqliteStore, Table, TableMetrics, Transaction, TxnError, Who};

fn open(dir: &std::path::Path) -> Table {
    let store = SqliteStore::open(&dir.join("edge.db")).unwrap();
    Table::open(Box::new(store), TableMetrics::unregistered().unwrap()).unwrap()
}

fn txn(json: &str) -> Transaction {
    serde_json::from_str(json).unwrap()
}

const SEED: &str = r#"{"ops":[
  {"op":"put","entity":{"kind":"backend","name":"mosh12","addresses":["10.0.0.12"]}},
  {"op":"put","entity":{"kind":"backend","name":"mosh40","addresses":["10.0.0.40","fd00::40"]}},
  {"op":"put","entity":{"kind":"member","name":"alice"}},
  {"op":"put","entity":{"kind":"site","name":"alice-blog","member":"alice","hosts":["blog.alice.org","*.alice.org"],"aliases":["www.blog.alice.org"],"backends":[{"backend":"mosh12","port":8080}]}},
  {"op":"put","entity":{"kind":"mail_login","user":"alice@alice.org","member":"alice","backend":"mosh12"}},
  {"op":"put","entity":{"kind":"mail_domain","domain":"alice.org","member":"alice","backend":"mosh12","overrides":{"bob":"mosh40"}}},
  {"op":"put","entity":{"kind":"sftp_login","user":"alice","member":"alice","backend":"mosh12"}},
  {"op":"put","entity":{"kind":"database","name":"alice_wp","member":"alice","server":"mosh12"}}
]}"#;

fn who() -> Who {
    Who::internal("test")
}

#[test]
fn commits_survive_reopen_and_lookups_follow_moves() {
    let dir = tempfile::tempdir().unwrap();
    {
        let table = open(dir.path());
        assert_eq!(table.apply_blocking(txn(SEED), who()).unwrap().version, 1);
        let snap = table.load();
        let m = snap.site_for_host("Blog.Alice.org.").unwrap();
        assert_eq!(&*m.site.name, "alice-blog");
        assert!(!m.wildcard && !m.alias);
        let w = snap.site_for_host("shop.alice.org").unwrap();
        assert!(w.wildcard);
        assert!(snap.site_for_host("www.blog.alice.org").unwrap().alias);
        assert!(snap.site_for_host("alice.org").is_none());
        assert_eq!(&*snap.mail_backend("ALICE@alice.org").unwrap().name, "mosh12");
        assert_eq!(snap.recipient("bob+news@alice.org"), Recipient::Routed(snap.backend("mosh40").unwrap()));
        assert_eq!(snap.recipient("carol@alice.org"), Recipient::Routed(snap.backend("mosh12").unwrap()));
        assert_eq!(snap.recipient("carol@other.org"), Recipient::UnknownDomain);
        let moved = table
            .apply_blocking(txn(r#"{"ops":[{"op":"move_member","member":"alice","to":"mosh40"}]}"#), who())
            .unwrap();
        assert_eq!(moved.version, 2);
        // Site, login, domain, sftp and database moved; the override already was on mosh40.
        assert_eq!(moved.changes.len(), 5);
    }
    let table = open(dir.path());
    let snap = table.load();
    assert_eq!(snap.version(), 2);
    assert_eq!(&*snap.site("alice-blog").unwrap().backends[0].backend, "mosh40");
    assert_eq!(snap.site("alice-blog").unwrap().backends[0].port, 8080);
    assert_eq!(&*snap.database_server("alice_wp").unwrap().name, "mosh40");
    assert_eq!(&*snap.sftp_login("alice").unwrap().backend, "mosh40");
}

#[tokio::test]
async fn history_diff_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    table.apply(txn(SEED), who()).await.unwrap();
    table
        .apply(txn(r#"{"comment":"move","ops":[{"op":"move_site","site":"alice-blog","to":"mosh40"}]}"#), who())
        .await
        .unwrap();
    table.apply(txn(r#"{"ops":[{"op":"delete","kind":"database","name":"alice_wp"}]}"#), who()).await.unwrap();

    let history = table.history(None, 10).await.unwrap();
    assert_eq!(history.iter().map(|h| h.version).collect::<Vec<_>>(), vec![3, 2, 1]);
    assert_eq!(history[1].comment.as_deref(), Some("move"));
    assert_eq!(history[1].who.origin, "test");

    let diff = table.diff(1, 3).await.unwrap();
    assert_eq!(diff.len(), 2);
    assert!(diff.iter().any(|c| c.kind == Kind::Database && c.after.is_none()));
    let back = table.diff(3, 1).await.unwrap();
    assert!(back.iter().any(|c| c.kind == Kind::Database && c.before.is_none() && c.after.is_some()));

    let rolled = table.rollback(1, None, who()).await.unwrap();
    assert_eq!(rolled.version, 4);
    let snap = table.load();
    assert_eq!(&*snap.site("alice-blog").unwrap().backends[0].backend, "mosh12");
    assert!(snap.database("alice_wp").is_some());
    assert!(table.diff(1, 4).await.unwrap().is_empty());
    assert!(matches!(table.rollback(4, None, who()).await, Err(ApplyError::NoSuchVersion(4))));
    assert!(matches!(table.rollback(9, None, who()).await, Err(ApplyError::NoSuchVersion(9))));
    let entry = table.history_entry(4).await.unwrap();
    assert_eq!(entry.who.origin, "rollback:test");
    assert_eq!(entry.changes.unwrap().len(), 2);
}

#[tokio::test]
async fn rejected_transactions_change_nothing_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    let mut versions = table.subscribe();
    table.apply(txn(SEED), who()).await.unwrap();
    versions.changed().await.unwrap();
    assert_eq!(*versions.borrow_and_update(), 1);
    let before = serde_json::to_string(&table.load().entities()).unwrap();

    let cases: &[(&str, &str)] = &[
        (
            r#"{"ops":[{"op":"put","entity":{"kind":"member","name":"bob"}},{"op":"put","entity":{"kind":"site","name":"s2","hosts":["blog.alice.org"],"backends":[{"backend":"mosh12"}]}}]}"#,
            "ops[1].entity.hosts: `blog.alice.org` already belongs to site `alice-blog`",
        ),
        (
            r#"{"ops":[{"op":"put","entity":{"kind":"site","name":"s3","hosts":["x.org"],"backends":[{"backend":"mosh99"}]}}]}"#,
            "ops[0].entity: site `s3` names unknown backend `mosh99`",
        ),
        (
            r#"{"ops":[{"op":"delete","kind":"backend","name":"mosh12"}]}"#,
            "ops[0].name: backend `mosh12` is still used by 5 route(s); move or delete them first",
        ),
        (r#"{"ops":[{"op":"move_site","site":"nope","to":"mosh40"}]}"#, "ops[0].site: no site `nope`"),
        (
            r#"{"ops":[{"op":"put","entity":{"kind":"site","name":"s4","hosts":["bad host"],"backends":[{"backend":"mosh12"}]}}]}"#,
            "ops[0].entity.hosts[0]: has an invalid character ' '",
        ),
        (
            r#"{"ops":[{"op":"add","entity":{"kind":"member","name":"alice"}}]}"#,
            "ops[0].entity.name: member `alice` already exists",
        ),
        (r#"{"ops":[]}"#, "the transaction has no operations"),
    ];
    for (json, message) in cases {
        let err = table.apply(txn(json), who()).await.unwrap_err();
        assert_eq!(err.to_string(), *message);
    }
    let err = table
        .apply(txn(r#"{"if_version":0,"ops":[{"op":"put","entity":{"kind":"member","name":"bob"}}]}"#), who())
        .await
        .unwrap_err();
    assert!(matches!(err, ApplyError::Rejected(TxnError::VersionConflict { expected: 0, actual: 1 })));

    assert_eq!(table.load().version(), 1);
    assert_eq!(serde_json::to_string(&table.load().entities()).unwrap(), before);
    assert!(!versions.has_changed().unwrap());
    // Swapping a host between two sites in one transaction is fine.
    let swap = r#"{"ops":[
      {"op":"put","entity":{"kind":"site","name":"s5","hosts":["blog.alice.org"],"backends":[{"backend":"mosh40"}]}},
      {"op":"put","entity":{"kind":"site","name":"alice-blog","member":"alice","hosts":["*.alice.org"],"backends":[{"backend":"mosh12"}]}}]}"#;
    table.apply(txn(swap), who()).await.unwrap();
    assert_eq!(&*table.load().site_for_host("blog.alice.org").unwrap().site.name, "s5");
}

#[tokio::test]
async fn evacuate_moves_every_route_of_a_backend() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    table.apply(txn(SEED), who()).await.unwrap();
    let done = table
        .apply(
            Transaction {
                ops: vec![Op::EvacuateBackend { from: "mosh12".into(), to: "mosh40".into() }],
                ..Default::default()
            },
            who(),
        )
        .await
        .unwrap();
    assert_eq!(done.changes.len(), 5);
    let snap = table.load();
    assert_eq!(snap.backend_ref_count("mosh12"), 0);
    assert_eq!(snap.backend_ref_count("mosh40"), 6);
    table.apply(txn(r#"{"ops":[{"op":"delete","kind":"backend","name":"mosh12"}]}"#), who()).await.unwrap();
}

#[tokio::test]
async fn a_transaction_that_changes_nothing_makes_no_version() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    table.apply(txn(SEED), who()).await.unwrap();
    let mut versions = table.subscribe();
    versions.borrow_and_update();
    let same = r#"{"ops":[{"op":"move_site","site":"alice-blog","to":"mosh12"}]}"#;
    let done = table.apply(txn(same), who()).await.unwrap();
    assert_eq!(done.version, 1);
    assert!(done.changes.is_empty());
    assert_eq!(table.dry_run(&txn(same)).unwrap().version, 1);
    assert!(!versions.has_changed().unwrap());
    assert_eq!(table.history(None, 10).await.unwrap().len(), 1);
    // A guard still applies to a no-op.
    let guarded = r#"{"if_version":0,"ops":[{"op":"move_site","site":"alice-blog","to":"mosh12"}]}"#;
    assert!(matches!(
        table.apply(txn(guarded), who()).await,
        Err(ApplyError::Rejected(TxnError::VersionConflict { .. }))
    ));
}

#[test]
fn unicode_names_on_the_wire_find_their_punycode_entries() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    let json = r#"{"ops":[
      {"op":"put","entity":{"kind":"backend","name":"m","addresses":["10.0.0.1"]}},
      {"op":"put","entity":{"kind":"site","name":"books","hosts":["Bücher.test","*.bücher.test"],"backends":[{"backend":"m"}]}},
      {"op":"put","entity":{"kind":"mail_domain","domain":"bücher.test","backend":"m"}}]}"#;
    table.apply_blocking(txn(json), who()).unwrap();
    let snap = table.load();
    assert_eq!(&*snap.site("books").unwrap().hosts()[0], "xn--bcher-kva.test");
    assert_eq!(&*snap.site_for_host("BÜCHER.test.").unwrap().site.name, "books");
    assert!(snap.site_for_host("www.bücher.test").unwrap().wildcard);
    assert_eq!(&*snap.site_for_host("xn--bcher-kva.test").unwrap().site.name, "books");
    assert!(matches!(snap.recipient("anna@Bücher.test"), Recipient::Routed(_)));
    assert!(snap.site_for_host("bü cher.test").is_none());
}

#[tokio::test]
async fn subscribers_learn_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    let mut changes = table.subscribe_changes();
    table.apply(txn(SEED), who()).await.unwrap();
    table.apply(txn(r#"{"ops":[{"op":"move_site","site":"alice-blog","to":"mosh40"}]}"#), who()).await.unwrap();
    // A no-op publishes nothing.
    table.apply(txn(r#"{"ops":[{"op":"move_site","site":"alice-blog","to":"mosh40"}]}"#), who()).await.unwrap();
    table.rollback(1, None, who()).await.unwrap();
    let first = changes.recv().await.unwrap();
    assert_eq!((first.version, first.changes.len()), (1, 8));
    let moved = changes.recv().await.unwrap();
    assert_eq!(moved.version, 2);
    assert_eq!(moved.changes[0].kind, Kind::Site);
    assert_eq!(&*moved.changes[0].name, "alice-blog");
    let rolled = changes.recv().await.unwrap();
    assert_eq!(rolled.version, 3);
    assert!(changes.try_recv().is_err());
}

#[test]
fn dns_parents_follow_puts_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    table.apply_blocking(txn(SEED), who()).unwrap();
    let snap = table.load();
    assert!(snap.dns_has_children("mysql"), "a database makes `mysql` an empty non-terminal");
    assert!(!snap.dns_has_children("alice_wp.mysql"));
    table
        .apply_blocking(
            txn(r#"{"ops":[
              {"op":"put","entity":{"kind":"dns_name","name":"_sip._tcp.x","records":[{"type":"TXT","value":"a"}]}},
              {"op":"put","entity":{"kind":"dns_name","name":"_xmpp._tcp.x","records":[{"type":"TXT","value":"b"}]}}]}"#),
            who(),
        )
        .unwrap();
    let snap = table.load();
    assert!(snap.dns_has_children("_tcp.x") && snap.dns_has_children("x"));
    assert!(!snap.dns_has_children("_sip._tcp.x") && !snap.dns_has_children("y"));
    table.apply_blocking(txn(r#"{"ops":[{"op":"delete","kind":"dns_name","name":"_sip._tcp.x"}]}"#), who()).unwrap();
    assert!(table.load().dns_has_children("_tcp.x"), "one owner is left below");
    table.apply_blocking(txn(r#"{"ops":[{"op":"delete","kind":"dns_name","name":"_xmpp._tcp.x"}]}"#), who()).unwrap();
    table.apply_blocking(txn(r#"{"ops":[{"op":"delete","kind":"database","name":"alice_wp"}]}"#), who()).unwrap();
    let snap = table.load();
    assert!(!snap.dns_has_children("_tcp.x") && !snap.dns_has_children("x") && !snap.dns_has_children("mysql"));
}

/// A host claimed and given back within one transaction stays with the
/// site that still lists it (found by the model test): a site that takes a
/// wildcard and is deleted again leaves the first site serving it; a
/// second site claiming a host whose owner is then put again (an evacuation
/// re-puts it) is refused, not committed with two sites listing the host.
#[test]
fn a_host_claimed_and_given_back_in_one_transaction_stays_with_its_site() {
    let dir = tempfile::tempdir().unwrap();
    let table = open(dir.path());
    table.apply_blocking(txn(SEED), who()).unwrap();
    let taken_and_deleted = r#"{"ops":[
      {"op":"put","entity":{"kind":"site","name":"s1","hosts":["*.alice.org"],"backends":[{"backend":"mosh40"}]}},
      {"op":"delete","kind":"site","name":"s1"}]}"#;
    table.apply_blocking(txn(taken_and_deleted), who()).unwrap();
    let snap = table.load();
    assert_eq!(&*snap.site_for_host("shop.alice.org").expect("still served").site.name, "alice-blog");

    let claimed_then_owner_put_again = r#"{"ops":[
      {"op":"add","entity":{"kind":"site","name":"s2","hosts":["blog.alice.org"],"backends":[{"backend":"mosh40"}]}},
      {"op":"evacuate_backend","from":"mosh12","to":"mosh40"}]}"#;
    let err = table.apply_blocking(txn(claimed_then_owner_put_again), who()).unwrap_err();
    assert!(err.to_string().contains("`blog.alice.org` already belongs to site"), "{err}");
    let snap = table.load();
    assert!(snap.site("s2").is_none());
    assert_eq!(&*snap.site_for_host("blog.alice.org").unwrap().site.name, "alice-blog");
}
