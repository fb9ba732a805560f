//! `edgectl` and `edge check-config` as an admin runs them: the README tour
//! against a real `edge` process.

#[path = "support/edge.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{write_config, EdgeProcess};

fn edgectl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl")).arg("--config").arg(config).args(args).output().unwrap()
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = edgectl(config, args);
    assert!(out.status.success(), "edgectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut edge = EdgeProcess::spawn(&config, &dir.path().join("var/control.sock"));
    edge.ready().await;
    let config = config.as_path();

    let status = ok(config, &["status"]);
    assert!(status.starts_with("version 1\n"), "{status}");
    assert!(status.contains("1 sites (3 hosts)"), "{status}");

    let added = ok(
        config,
        &["site", "add", "shop", "--host", "shop.bob.test", "--host", "*.shop.bob.test", "--backend", "mosh12:8081@2"],
    );
    assert!(added.starts_with("version 2: 1 change(s)\n  + site shop"), "{added}");
    let dry = ok(config, &["site", "move", "shop", "--to", "mosh40", "--dry-run"]);
    assert!(dry.starts_with("dry run: would make version 3"), "{dry}");
    let moved = ok(config, &["site", "move", "shop", "--to", "mosh40"]);
    assert!(moved.contains(r#"backends: [{"backend":"mosh12","port":8081,"weight":2}] -> [{"backend":"mosh40","port":8081,"weight":2}]"#), "{moved}");
    let shown = ok(config, &["site", "show", "shop"]);
    assert!(shown.starts_with("version 3\n") && shown.contains("\"backend\": \"mosh40\""), "{shown}");
    let lookup = ok(config, &["lookup", "host", "www.shop.bob.test"]);
    assert!(lookup.contains("\"site\": \"shop\"") && lookup.contains("127.0.0.40"), "{lookup}");

    let history = ok(config, &["history"]);
    assert!(history.contains("move site shop -> mosh40") && history.contains("add site shop"), "{history}");
    let diff = ok(config, &["diff", "1", "3"]);
    assert!(diff.starts_with("from version 1 to 3: 1 change(s)\n  + site shop"), "{diff}");

    let member = ok(config, &["member", "move", "alice", "--to", "mosh40", "--databases-to", "mosh12"]);
    assert!(member.starts_with("version 4: 4 change(s)"), "{member}");
    let evacuated = ok(config, &["backend", "evacuate", "mosh12", "--to", "mosh40"]);
    assert!(evacuated.starts_with("version 5: 1 change(s)\n  ~ database alice_wp"), "{evacuated}");
    let removed = ok(config, &["site", "rm", "shop"]);
    assert!(removed.starts_with("version 6: 1 change(s)\n  - site shop"), "{removed}");
    let rolled = ok(config, &["rollback", "1"]);
    assert!(rolled.starts_with("version 7: 5 change(s)"), "{rolled}");
    let same = ok(config, &["site", "move", "alice-blog", "--to", "mosh12"]);
    assert_eq!(same, "no change: the table stays at version 7\n");
    let again = edgectl(config, &["rollback", "1"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("the table at version 1 is the same as now"));
    let sites = ok(config, &["--json", "get", "sites"]);
    let sites: serde_json::Value = serde_json::from_str(&sites).unwrap();
    assert_eq!(sites["entities"].as_array().unwrap().len(), 1);

    // Errors: non-zero exit and the server's message on stderr.
    let out = edgectl(config, &["site", "add", "x", "--host", "blog.alice.test", "--backend", "mosh12"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ops[0].entity.hosts: `blog.alice.test` already belongs to site `alice-blog` (422"), "{err}");
    let out = edgectl(config, &["site", "move", "alice-blog", "--to", "nowhere"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backend `nowhere`"));
    let out =
        Command::new(env!("CARGO_BIN_EXE_edgectl")).args(["--socket", "/nonexistent/sock", "status"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is edge running?"));

    // apply FILE, dry run first.
    let file = dir.path().join("txn.json");
    std::fs::write(&file, r#"{"ops":[{"op":"set_backend_state","backend":"mosh12","state":"draining"}]}"#).unwrap();
    let f = file.to_str().unwrap();
    assert!(ok(config, &["apply", f, "--dry-run"]).starts_with("dry run"));
    assert!(ok(config, &["apply", f]).contains("state: \"up\" -> \"draining\""));

    assert!(edge.terminate().success(), "edge did not stop cleanly on SIGTERM");
    assert!(!dir.path().join("var/control.sock").exists(), "socket left behind");
}

#[test]
fn check_config_accepts_good_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "");
    let out = Command::new(env!("CARGO_BIN_EXE_edge")).arg("--config").arg(&good).arg("check-config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/edge.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .arg("--config")
        .arg(&shipped)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[control]\nmode = \"rw\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge")).arg("--config").arg(&bad).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`control.mode`"));

    let seed = dir.path().join("seed.json");
    std::fs::write(&seed, r#"{"ops":[{"op":"put","entity":{"kind":"site","name":"s","hosts":["a.test"],"backends":[{"backend":"ghost"}]}}]}"#).unwrap();
    let cfg = dir.path().join("seeded.toml");
    std::fs::write(&cfg, format!("[store]\nseed = \"{}\"\n", seed.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge")).arg("--config").arg(&cfg).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend `ghost`"));
}

/// `edgectl dns import` takes a BIND zone file in one transaction (dry run
/// first), and the edge's dnsd answers the imported names at once. A file
/// with records the table cannot hold changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_import_then_dig() {
    let dir = tempfile::tempdir().unwrap();
    // dnsd binds UDP and TCP on the port: it must be free for both (a port
    // free for UDP only once made edge exit at start in CI).
    let port = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let config = write_config(dir.path(), &format!("[dns]\nlisten = [\"127.0.0.1:{port}\"]\n"));
    let mut edge = EdgeProcess::spawn(&config, &dir.path().join("var/control.sock"));
    edge.ready().await;
    let config = config.as_path();
    let zone = dir.path().join("mayfirst.local.zone");
    std::fs::write(
        &zone,
        "$ORIGIN mayfirst.local.\n$TTL 3600\n@ IN SOA ns1 hostmaster 2026010101 7200 3600 1209600 300\n@ IN NS ns1\n\
         db7.mysql IN A 127.0.0.12\ndb8.mysql IN A 10.1.0.8\nwiki IN CNAME db8.mysql\n",
    )
    .unwrap();
    let zone = zone.to_str().unwrap();
    let dry = ok(config, &["dns", "import", zone, "--dry-run"]);
    assert!(dry.starts_with("imported: 2 database(s), 1 new backend(s), 1 extra name(s)"), "{dry}");
    assert!(dry.contains("dry run: would make version 2"), "{dry}");
    assert!(ok(config, &["status"]).starts_with("version 1\n"));
    let done = ok(config, &["dns", "import", zone]);
    assert!(done.contains("version 2: 4 change(s)"), "{done}");
    let dig = |name: &str| {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+short", "+time=2", "+tries=1"])
            .args(name.split_whitespace())
            .output()
            .expect("dig runs (scripts/install-deps.sh test installs it)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // db7 went to the existing backend with that address (mosh12).
    assert_eq!(dig("db7.mysql.mayfirst.local"), "127.0.0.12");
    assert_eq!(dig("wiki.mayfirst.local"), "db8.mysql.mayfirst.local.\n10.1.0.8");
    let db7 = ok(config, &["get", "database", "db7"]);
    assert!(db7.contains("\"server\": \"mosh12\""), "{db7}");
    // The README's DNS tour: an evacuation moves the database; the next
    // query sees it, with the serial one higher.
    assert_eq!(dig("mayfirst.local SOA").split_whitespace().nth(2), Some("2"));
    let evacuated = ok(config, &["backend", "evacuate", "mosh12", "--to", "mosh40"]);
    assert!(evacuated.starts_with("version 3:"), "{evacuated}");
    assert_eq!(dig("db7.mysql.mayfirst.local"), "127.0.0.40");
    assert_eq!(dig("mayfirst.local SOA").split_whitespace().nth(2), Some("3"));
    // The example zone file shipped for the tour imports cleanly.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.zone");
    let dry = ok(config, &["dns", "import", example.to_str().unwrap(), "--dry-run"]);
    assert!(dry.starts_with("imported: 1 database(s), 0 new backend(s), 2 extra name(s)"), "{dry}");

    std::fs::write(
        dir.path().join("bad.zone"),
        "$ORIGIN mayfirst.local.\n$TTL 60\nx IN A 10.0.0.1\ny IN PTR z.example.\n",
    )
    .unwrap();
    let out = edgectl(config, &["dns", "import", dir.path().join("bad.zone").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("y: PTR records are not supported") && err.contains("nothing was imported"), "{err}");
    assert!(ok(config, &["status"]).starts_with("version 3\n"));

    // The serial never goes back across a restart: it is the stored version.
    assert!(edge.terminate().success());
    let mut edge = EdgeProcess::spawn(config, &dir.path().join("var/control.sock"));
    edge.ready().await;
    assert_eq!(dig("mayfirst.local SOA").split_whitespace().nth(2), Some("3"));
    assert_eq!(dig("db7.mysql.mayfirst.local"), "127.0.0.40");
}
