//! The standalone `dnsd` binary beside a writer: it follows the SQLite store
//! another process commits to, and answers each new version within its poll
//! interval. Writes through a follower are refused.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use routing_table::{ApplyError, SqliteStore, Table, TableMetrics};
use support::{eventually, txn, who, ZONE_DATA};

#[test]
fn dnsd_follows_the_store_edge_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("var")).unwrap();
    // The writer, as `edge` would be.
    let writer = Table::open(
        Box::new(SqliteStore::open(&d.join("var/edge.db")).unwrap()),
        TableMetrics::unregistered().unwrap(),
    )
    .unwrap();
    writer.apply_blocking(txn(ZONE_DATA), who()).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = d.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[edge]\ndata_dir = \"{}/var\"\n[control]\nmax_connections = 4\n[dns]\nlisten = [\"127.0.0.1:{port}\"]\nudp_sockets = 1\n",
            d.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dnsd"))
        .args(["--config", config.to_str().unwrap(), "--poll-ms", "20", "--metrics", &metrics.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dig = |name: &str| {
        support::run("dig", &format!("@127.0.0.1 -p {port} +short +time=1 +tries=1 {name}")).trim().to_string()
    };
    eventually(Duration::from_secs(10), || (dig("alice_wp.mysql.mayfirst.local") == "10.0.0.12").then_some(()));
    let v = writer
        .apply_blocking(
            txn(r#"{"ops":[{"op":"put","entity":{"kind":"database","name":"alice_wp","member":"alice","server":"mosh40"}}]}"#),
            who(),
        )
        .unwrap()
        .version;
    eventually(Duration::from_secs(2), || (dig("alice_wp.mysql.mayfirst.local") == "10.0.0.40").then_some(()));
    let soa = dig("mayfirst.local SOA");
    assert_eq!(soa.split_whitespace().nth(2), Some(v.to_string().as_str()), "{soa}");
    let text = support::run("curl", &format!("-s http://{metrics}/metrics"));
    assert!(text.contains(&format!("edge_table_version {v}")), "{text}");
    assert!(text.contains("edge_dns_queries_total"), "{text}");
    // SIGTERM stops it cleanly.
    let pid = child.id().to_string();
    support::run("kill", &format!("-TERM {pid}"));
    let status = eventually(Duration::from_secs(5), || child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_follower_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let writer =
        Table::open(Box::new(SqliteStore::open(&path).unwrap()), TableMetrics::unregistered().unwrap()).unwrap();
    writer.apply_blocking(txn(ZONE_DATA), who()).unwrap();
    let follower = Table::follow(
        Box::new(SqliteStore::open(&path).unwrap()),
        TableMetrics::unregistered().unwrap(),
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(follower.load().version(), 1);
    let err = follower.apply_blocking(txn(ZONE_DATA), who()).unwrap_err();
    assert!(matches!(err, ApplyError::ReadOnly), "{err}");
    // Deletes are followed too.
    writer.apply_blocking(txn(r#"{"ops":[{"op":"delete","kind":"database","name":"alice_shop"}]}"#), who()).unwrap();
    eventually(Duration::from_secs(2), || (follower.load().version() == 2).then_some(()));
    assert!(follower.load().database("alice_shop").is_none());
    assert!(follower.load().database("alice_wp").is_some());
}
