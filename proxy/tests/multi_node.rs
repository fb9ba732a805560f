//! Several edge nodes on one etcd cluster: a real 3-member etcd (Debian's
//! `etcd-server`) and `edge` processes, all started here on loopback ports.

#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/edge.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use etcd::{free_port, EtcdCluster, Relay};
use proxy::control::client::{Answer, Client};
use serde_json::{json, Value};
use support::{eventually, seed_file, EdgeProcess};

/// One `edge` process on an etcd store.
struct Node {
    process: EdgeProcess,
    client: Client,
    config: PathBuf,
    dns_port: u16,
    admin_port: u16,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(endpoints: &[String], seed: bool) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (dns_port, admin_port) = (free_port(), free_port());
        let seed = if seed { seed_file().display().to_string() } else { String::new() };
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let text = format!(
            "[edge]\ndata_dir = \"{d}/var\"\n\
             [store]\nkind = \"etcd\"\nseed = \"{seed}\"\n\
             [store.etcd]\nendpoints = [{}]\nprefix = \"/edge-test/\"\ntimeout_ms = 1000\n\
             [control]\nsocket = \"{d}/var/control.sock\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
             [log]\nlevel = \"warn\"\n\
             [dns]\nlisten = [\"127.0.0.1:{dns_port}\"]\n",
            endpoints.join(", ")
        );
        let config = dir.path().join("edge.toml");
        std::fs::write(&config, text).unwrap();
        let socket = dir.path().join("var/control.sock");
        let mut process = EdgeProcess::spawn(&config, &socket);
        process.ready().await;
        Node { process, client: Client::new(&socket), config, dns_port, admin_port, _dir: dir }
    }

    async fn status(&self) -> Value {
        let a = self.client.get("/v1/status").await.expect("status");
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body
    }

    async fn version(&self) -> u64 {
        self.status().await["version"].as_u64().unwrap()
    }

    async fn post(&self, body: &Value) -> Answer {
        self.client.post("/v1/transactions", body).await.expect("control socket")
    }

    /// Applies a transaction that must succeed; returns its version.
    async fn apply(&self, body: &Value) -> u64 {
        let a = self.post(body).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["version"].as_u64().unwrap()
    }

    async fn wait_version(&self, at_least: u64, secs: u64) {
        eventually(secs, &format!("version {at_least}"), || async { (self.version().await >= at_least).then_some(()) })
            .await;
    }

    fn dig(&self, name: &str) -> String {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.dns_port.to_string(), "+short", "+time=2", "+tries=1"])
            .args(name.split_whitespace())
            .output()
            .expect("dig (scripts/install-deps.sh test installs it)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sS", "-m", "5", &format!("http://127.0.0.1:{}/metrics", self.admin_port)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

fn put_backend(name: &str, addr: &str) -> Value {
    json!({"ops": [{"op": "put", "entity": {"kind": "backend", "name": name, "addresses": [addr]}}]})
}

/// A transaction writing the same tag into two entities: any mix of two
/// transactions shows as two different tags.
fn put_pair(tag: &str, if_version: Option<u64>) -> Value {
    let name = |n: &str| json!({"kind": "dns_name", "name": n, "records": [{"type": "TXT", "value": tag}]});
    let mut body = json!({"ops": [{"op": "put", "entity": name("race1")}, {"op": "put", "entity": name("race2")}]});
    if let Some(v) = if_version {
        body["if_version"] = json!(v);
    }
    body
}

async fn pair_tags(node: &Node) -> (String, String) {
    let get = |n: &'static str| async move {
        let a = node.client.get(&format!("/v1/table/dns_name/{n}")).await.unwrap();
        a.body["entity"]["records"][0]["value"].as_str().unwrap_or_default().to_string()
    };
    (get("race1").await, get("race2").await)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Polls `node` every millisecond until it serves `version`; the time from `since`.
async fn seen_after(node: &Node, version: u64, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if node.version().await >= version {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "version {version} not seen in 10 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_through_one_node_reach_the_others_within_100_ms_and_history_is_shared() {
    let cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let a = Node::start(&endpoints, true).await;
    let b = Node::start(&endpoints, false).await;
    let c = Node::start(&[endpoints[2].clone(), endpoints[0].clone()], false).await;
    let seeded = a.version().await;
    assert!(seeded > 0, "node A seeded the empty cluster");
    b.wait_version(seeded, 5).await;
    c.wait_version(seeded, 5).await;
    assert_eq!(b.dig("alice_wp.mysql.mayfirst.local"), "127.0.0.12", "B answers from the shared table");

    // 200 updates through A; after each ack, B and C are polled until they serve it.
    let (mut from_ack, mut versions) = (Vec::new(), Vec::new());
    for i in 0..200u32 {
        let v = a.apply(&put_backend("prop", &format!("127.0.1.{}", i % 250 + 1))).await;
        let acked = Instant::now();
        let (tb, tc) = tokio::join!(seen_after(&b, v, acked), seen_after(&c, v, acked));
        from_ack.extend([tb, tc]);
        versions.push(v);
    }
    from_ack.sort();
    let (p50, p99, max) = (percentile(&from_ack, 0.5), percentile(&from_ack, 0.99), from_ack[from_ack.len() - 1]);
    println!("propagation A -> B, C over 200 updates (400 observations): p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?} over 100 ms");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions increase");
    assert_eq!(b.dig("prop.mayfirst.local"), "127.0.1.200", "B's dnsd serves the last update");

    // Versions are etcd revisions: a key outside the table leaves a gap,
    // which followers and dnsd's serial step over.
    let before = a.version().await;
    cluster.etcdctl(&["put", "/unrelated/key", "x"]);
    let after = a.apply(&put_backend("gap", "127.0.2.1")).await;
    assert!(after > before + 1, "a revision outside the table is a gap: {before} -> {after}");
    c.wait_version(after, 5).await;
    b.wait_version(after, 5).await;
    let soa = c.dig("mayfirst.local SOA");
    assert!(soa.split_whitespace().nth(2) == Some(&after.to_string()), "serial follows the version: {soa}");

    // History written through A reads the same through B; a rollback
    // through B is served by A.
    let ha = a.client.get("/v1/history?limit=5").await.unwrap().body;
    let hb = b.client.get("/v1/history?limit=5").await.unwrap().body;
    assert_eq!(ha, hb);
    assert_eq!(hb["entries"][0]["version"], after, "{hb}");
    let entry = b.client.get(&format!("/v1/history/{after}")).await.unwrap();
    assert_eq!(entry.body["changes"][0]["name"], "gap", "{:?}", entry.body);
    let rolled = b.client.post("/v1/rollback", &json!({"to": before})).await.unwrap();
    assert_eq!(rolled.status, 200, "{:?}", rolled.body);
    let rv = rolled.body["version"].as_u64().unwrap();
    a.wait_version(rv, 5).await;
    let gone = a.client.get("/v1/table/backend/gap").await.unwrap();
    assert_eq!(gone.status, 404, "the rollback removed what version {after} added: {:?}", gone.body);
    let diff = c.client.get(&format!("/v1/diff?from={before}&to={rv}")).await.unwrap();
    assert_eq!(diff.status, 200, "{:?}", diff.body);
    assert_eq!(diff.body["changes"].as_array().map(Vec::len), Some(0), "{:?}", diff.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_nodes_get_409_on_a_stale_if_version_and_never_mix() {
    let cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let a = Node::start(&endpoints, true).await;
    let b = Node::start(&endpoints, false).await;
    for round in 0..30 {
        let v = a.version().await;
        b.wait_version(v, 5).await;
        let (body_a, body_b) = (put_pair(&format!("A{round}"), Some(v)), put_pair(&format!("B{round}"), Some(v)));
        let (ra, rb) = tokio::join!(a.post(&body_a), b.post(&body_b));
        let mut codes = [ra.status.as_u16(), rb.status.as_u16()];
        codes.sort();
        assert_eq!(codes, [200, 409], "round {round}: one wins, the other is told the version moved: {ra:?} {rb:?}");
        let loser = if ra.status == 409 { &ra } else { &rb };
        assert!(loser.error_message().unwrap().contains("version"), "{loser:?}");
        let winner = if ra.status == 200 { format!("A{round}") } else { format!("B{round}") };
        let won = if ra.status == 200 { &ra } else { &rb }.body["version"].as_u64().unwrap();
        a.wait_version(won, 5).await;
        b.wait_version(won, 5).await;
        for node in [&a, &b] {
            assert_eq!(pair_tags(node).await, (winner.clone(), winner.clone()), "round {round}");
        }
    }
    // Without if_version, both nodes' transactions are applied, one after
    // the other, each whole.
    let start = a.version().await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        for (node, tag) in [(&a, "a"), (&b, "b")] {
            let (client, body) = (node.client.clone(), put_pair(&format!("{tag}{i}"), None));
            tasks.push(tokio::spawn(async move { client.post("/v1/transactions", &body).await.unwrap() }));
        }
    }
    let mut versions = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        versions.push(r.body["version"].as_u64().unwrap());
    }
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), 20, "20 distinct versions: {versions:?}");
    let history = a.client.get("/v1/history?limit=25").await.unwrap().body;
    let entries: Vec<&Value> =
        history["entries"].as_array().unwrap().iter().filter(|e| e["version"].as_u64().unwrap() > start).collect();
    assert_eq!(entries.len(), 20, "{history}");
    assert!(entries.iter().all(|e| e["changed"] == 2), "each version holds both entities: {history}");
    let (t1, t2) = pair_tags(&b).await;
    assert_eq!(t1, t2);
}

/// The member that leads the cluster now, by `etcdctl endpoint status`.
fn leader(cluster: &EtcdCluster, alive: &[usize]) -> Option<usize> {
    let endpoints: Vec<String> = alive.iter().map(|&i| cluster.members[i].client_url.clone()).collect();
    let out = Command::new("etcdctl")
        .args(["--endpoints", &endpoints.join(","), "endpoint", "status", "-w", "json"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).ok()?;
    let status = status.as_array()?;
    let leader_id = status.first()?["Status"]["leader"].as_u64()?;
    let ep = status.iter().find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader_id))?["Endpoint"]
        .as_str()?
        .to_string();
    cluster.members.iter().position(|m| m.client_url == ep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_etcd_leader_keeps_writes_working() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let a = Node::start(&endpoints, true).await;
    let b = Node::start(&endpoints, false).await;
    let killed = leader(&cluster, &[0, 1, 2]).expect("a leader");
    cluster.kill(killed);
    let killed_at = Instant::now();
    // Writes go on through the election: a write refused (503) while the
    // survivors elect a leader is retried; every one must land.
    let (mut refused, mut last) = (0, 0);
    for i in 0..30u32 {
        let body = put_backend("after-kill", &format!("127.0.3.{}", i + 1));
        let started = Instant::now();
        loop {
            let r = a.post(&body).await;
            if r.status == 200 {
                last = r.body["version"].as_u64().unwrap();
                break;
            }
            assert_eq!(r.status, 503, "{r:?}");
            refused += 1;
            assert!(started.elapsed() < Duration::from_secs(5), "write {i} still refused after 5 s: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "killed etcd leader m{killed}: 30 writes landed in {:?}, {refused} attempt(s) refused during the election",
        killed_at.elapsed()
    );
    b.wait_version(last, 5).await;
    assert_eq!(b.dig("after-kill.mayfirst.local"), "127.0.3.30");
    let alive: Vec<usize> = (0..3).filter(|&i| i != killed).collect();
    assert!(leader(&cluster, &alive).is_some_and(|l| l != killed), "the survivors elected a leader");
    // The killed member comes back and catches up; nodes keep working.
    cluster.restart(killed);
    let v = a.apply(&put_backend("after-restart", "127.0.3.99")).await;
    b.wait_version(v, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_the_current_version_from_its_first_answer() {
    let cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let a = Node::start(&endpoints, true).await;
    let mut c = Node::start(&endpoints, false).await;
    c.wait_version(a.version().await, 5).await;
    c.process.kill(); // SIGKILL
    let mut current = 0;
    for i in 0..10 {
        current = a.apply(&put_backend("while-down", &format!("127.0.4.{}", i + 1))).await;
    }
    let socket = c.process.socket.clone();
    c.process = EdgeProcess::spawn(&c.config, &socket);
    let first = c.process.ready().await; // the first answer of its control socket
    assert_eq!(first.body["version"].as_u64(), Some(current), "{:?}", first.body);
    assert_eq!(c.dig("while-down.mayfirst.local"), "127.0.4.10");

    // The table deleted under the nodes: they keep serving, say why they are
    // stale, and refuse writes instead of starting over.
    cluster.etcdctl(&["del", "--prefix", "/edge-test/"]);
    let stale = eventually(5, "A stale after the prefix was deleted", || async {
        let s = a.status().await;
        (!s["stale"].is_null()).then_some(s)
    })
    .await;
    assert!(stale["stale"]["error"].as_str().unwrap().contains("went back"), "{stale}");
    assert_eq!(c.dig("while-down.mayfirst.local"), "127.0.4.10");
    let refused = a.post(&put_backend("after-delete", "127.0.4.99")).await;
    assert_eq!(refused.status, 503, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_etcd_keeps_serving_says_it_is_stale_and_catches_up() {
    let cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let relay = Relay::start(cluster.addr(0)).await;
    let a = Node::start(&endpoints, true).await;
    let c = Node::start(&[relay.url()], false).await;
    let v = a.apply(&put_backend("cut", "127.0.5.1")).await;
    c.wait_version(v, 5).await;
    assert_eq!(c.metric("edge_table_stale"), Some(0.0));

    relay.cut();
    let cut_at = Instant::now();
    let stale = eventually(10, "C reports itself stale", || async {
        let s = c.status().await;
        (!s["stale"].is_null()).then_some(s)
    })
    .await;
    println!("stale reported {:?} after the cut: {}", cut_at.elapsed(), stale["stale"]);
    assert_eq!(stale["version"], v, "it still serves its last version");
    assert_eq!(c.metric("edge_table_stale"), Some(1.0));
    let out =
        Command::new(env!("CARGO_BIN_EXE_edgectl")).arg("--config").arg(&c.config).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("STALE"), "edgectl status says so: {text}");
    // It keeps answering from the last snapshot...
    assert_eq!(c.dig("cut.mayfirst.local"), "127.0.5.1");
    // ...and refuses writes, clearly, without applying anything.
    let refused = c.post(&put_backend("through-c", "127.0.5.9")).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    let msg = refused.error_message().unwrap();
    assert!(msg.contains("cannot be reached") && msg.contains("refuses changes"), "{msg}");
    // The others go on.
    let moved = a.apply(&put_backend("cut", "127.0.5.2")).await;
    assert_eq!(c.dig("cut.mayfirst.local"), "127.0.5.1", "C cannot know yet");

    relay.restore();
    let restored_at = Instant::now();
    c.wait_version(moved, 15).await;
    eventually(5, "C no longer stale", || async { c.status().await["stale"].is_null().then_some(()) }).await;
    println!("caught up {:?} after the partition healed", restored_at.elapsed());
    assert_eq!(c.dig("cut.mayfirst.local"), "127.0.5.2");
    assert_eq!(
        c.client.get("/v1/table/backend/through-c").await.unwrap().status,
        404,
        "the refused write left nothing"
    );
    let ok = c.post(&put_backend("through-c", "127.0.5.9")).await;
    assert_eq!(ok.status, 200, "writes work again: {ok:?}");
}

fn edge_migrate(config: &Path, to: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("--config")
        .arg(config)
        .args(["migrate", "--to", to])
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_the_embedded_store_into_etcd_and_back() {
    let cluster = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let socket = dir.path().join("var/control.sock");
    let config_for = |kind: &str| {
        let text = format!(
            "[edge]\ndata_dir = \"{d}/var\"\n[store]\nkind = \"{kind}\"\nseed = \"{}\"\n\
             [store.etcd]\nendpoints = [\"{}\"]\nprefix = \"/migrated/\"\n\
             [control]\nsocket = \"{d}/var/control.sock\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n",
            seed_file().display(),
            cluster.endpoints()[0]
        );
        let path = dir.path().join(format!("{kind}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (sqlite_config, etcd_config) = (config_for("sqlite"), config_for("etcd"));
    // An embedded store with a few versions of history.
    let mut edge = EdgeProcess::spawn(&sqlite_config, &socket);
    edge.ready().await;
    let client = Client::new(&socket);
    for i in 0..5 {
        let a = client.post("/v1/transactions", &put_backend("m", &format!("127.0.6.{}", i + 1))).await.unwrap();
        assert_eq!(a.status, 200);
    }
    let sqlite_table = client.get("/v1/table").await.unwrap().body;
    let sqlite_version = sqlite_table["version"].as_u64().unwrap();
    edge.terminate();

    let (ok, out) = edge_migrate(&sqlite_config, "etcd");
    assert!(ok, "{out}");
    assert!(out.contains("copied 11 entities") && out.contains("the source is unchanged"), "{out}");
    let (ok, out) = edge_migrate(&sqlite_config, "etcd");
    assert!(!ok && out.contains("is not empty"), "a second copy is refused: {out}");

    let mut edge = EdgeProcess::spawn(&etcd_config, &socket);
    edge.ready().await;
    let etcd_table = client.get("/v1/table").await.unwrap().body;
    let etcd_version = etcd_table["version"].as_u64().unwrap();
    assert!(
        etcd_version > sqlite_version,
        "versions never go back (dnsd's serial): {sqlite_version} -> {etcd_version}"
    );
    assert_eq!(etcd_table["entities"], sqlite_table["entities"]);
    let history = client.get("/v1/history").await.unwrap().body;
    assert!(history["entries"][0]["comment"].as_str().unwrap().starts_with("copied from sqlite"), "{history}");
    let a = client.post("/v1/transactions", &put_backend("m", "127.0.6.99")).await.unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    let etcd_table = client.get("/v1/table").await.unwrap().body;
    edge.terminate();

    // Back: the embedded file is not empty, so it is refused until moved aside.
    let (ok, out) = edge_migrate(&etcd_config, "sqlite");
    assert!(!ok && out.contains("is not empty"), "{out}");
    std::fs::rename(dir.path().join("var/edge.db"), dir.path().join("var/edge.db.old")).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("var/edge.db{side}")));
    }
    let (ok, out) = edge_migrate(&etcd_config, "sqlite");
    assert!(ok, "{out}");
    let mut edge = EdgeProcess::spawn(&sqlite_config, &socket);
    edge.ready().await;
    let back = client.get("/v1/table").await.unwrap().body;
    assert_eq!(back, etcd_table, "the same table at the same version");
    edge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_user_limited_to_the_prefix_is_enough_and_a_wrong_password_is_a_clear_error() {
    let cluster = EtcdCluster::start(1);
    let root = ["--user", "root:root-pw"];
    cluster.etcdctl(&["user", "add", "root:root-pw", "--interactive=false"]);
    cluster.etcdctl(&["role", "add", "edge"]);
    cluster.etcdctl(&["role", "grant-permission", "edge", "--prefix=true", "readwrite", "/edge-test/"]);
    cluster.etcdctl(&["user", "add", "edge:edge-pw", "--interactive=false"]);
    cluster.etcdctl(&["user", "grant-role", "edge", "edge"]);
    cluster.etcdctl(&["auth", "enable"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let endpoint = cluster.endpoints()[0].clone();
    let config = |name: &str, password: &str, prefix: &str| {
        let pw = dir.path().join(format!("{name}.pw"));
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        let text = format!(
            "[edge]\ndata_dir = \"{d}/{name}\"\n[store]\nkind = \"etcd\"\nseed = \"{}\"\n\
             [store.etcd]\nendpoints = [\"{endpoint}\"]\nprefix = \"{prefix}\"\nuser = \"edge\"\npassword_file = \"{}\"\n\
             [control]\nsocket = \"{d}/{name}/control.sock\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n",
            seed_file().display(),
            pw.display()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        (path, dir.path().join(format!("{name}/control.sock")))
    };
    // The right password, on its own prefix: it seeds and serves.
    let (good, socket) = config("good", "edge-pw", "/edge-test/");
    let mut edge = EdgeProcess::spawn(&good, &socket);
    let status = edge.ready().await;
    assert!(status.body["version"].as_u64().unwrap() > 0, "{:?}", status.body);
    let stored = cluster.etcdctl(&[root[0], root[1], "get", "--prefix", "--keys-only", "/edge-test/e/backend/"]);
    assert!(stored.contains("/edge-test/e/backend/mosh12"), "{stored}");
    edge.terminate();
    // A wrong password, or a prefix the user may not read: edge does not
    // start, and says why.
    for (name, password, prefix, expect) in [
        ("badpw", "nope", "/edge-test/", "authentication failed"),
        ("badprefix", "edge-pw", "/other/", "permission denied"),
    ] {
        let (path, _) = config(name, password, prefix);
        let out = Command::new(env!("CARGO_BIN_EXE_edge")).arg("--config").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: started");
        assert!(err.to_lowercase().contains(expect), "{name}: {err}");
    }
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate
/// with the openssl CLI; returns their paths by name.
fn make_certs(dir: &Path) -> std::collections::HashMap<&'static str, PathBuf> {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1", "-subj", "/CN=edge-test-ca"],
    ]
    .concat());
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, extf) =
            (format!("{name}-key.pem"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &extf,
        ]);
    }
    ["ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"]
        .into_iter()
        .map(|n| (n, dir.join(n)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let (client_port, peer_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let _etcd = KillOnDrop(
        Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("tls={peer}"), "--client-cert-auth"])
            .arg("--cert-file")
            .arg(&certs["server.pem"])
            .arg("--key-file")
            .arg(&certs["server-key.pem"])
            .arg("--trusted-ca-file")
            .arg(&certs["ca.pem"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let d = dir.path().display();
    let config = |name: &str, identity: bool| {
        let id = if identity {
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                certs["client.pem"].display(),
                certs["client-key.pem"].display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "[edge]\ndata_dir = \"{d}/{name}\"\n[store]\nkind = \"etcd\"\nseed = \"{}\"\n\
             [store.etcd]\nendpoints = [\"{url}\"]\nprefix = \"/edge-tls/\"\nca_file = \"{}\"\n{id}\
             [control]\nsocket = \"{d}/{name}/control.sock\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n",
            seed_file().display(),
            certs["ca.pem"].display()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        (path, dir.path().join(format!("{name}/control.sock")))
    };
    // etcd needs a moment to listen; the edge would fail its first read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err() {
        assert!(Instant::now() < deadline, "etcd (TLS) did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (good, socket) = config("good", true);
    let mut edge = EdgeProcess::spawn(&good, &socket);
    let status = edge.ready().await;
    assert!(status.body["version"].as_u64().unwrap() > 0, "seeded over TLS: {:?}", status.body);
    assert!(status.body["store"].as_str().unwrap().starts_with("etcd https://"), "{:?}", status.body);
    edge.terminate();
    // Without the client certificate, etcd refuses the handshake: edge does
    // not start, and says so.
    let (bad, _) = config("nocert", false);
    let out = Command::new(env!("CARGO_BIN_EXE_edge")).arg("--config").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd https://127.0.0.1"), "{err}");
}

/// A child process killed (SIGKILL) when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
