//! The HTTP proxy against real nginx origins (Debian's nginx-light), each
//! the test's own process on a loopback address of its own, with a real
//! `edge` process in front: routing by Host, aliases, the 404 page, the
//! forwarding headers, protection modes switched by table updates, retry on
//! a dead backend, and moves under continuous load with no failed request.

#[path = "support/nginx.rs"]
mod nginx;
#[path = "support/edge.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nginx::{free_port, Nginx};
use proxy::control::client::Client;
use serde_json::json;
use support::{config_text, EdgeProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    _dir: tempfile::TempDir,
    edge: EdgeProcess,
    client: Client,
    port: u16,
    admin: u16,
    origins: Vec<Nginx>,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let origins = vec![Nginx::start(d, "b1", "127.0.0.51"), Nginx::start(d, "b2", "127.0.0.52")];
        let (port, admin) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
        let config = d.join("edge.toml");
        let http = format!("[http]\nlisten = [\"127.0.0.1:{port}\"]\ntrusted_proxies = [\"127.0.0.2/32\"]\n");
        let text = config_text(d, "").replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin}\""));
        std::fs::write(&config, text + &http).unwrap();
        let socket = d.join("var/control.sock");
        let mut edge = EdgeProcess::spawn(&config, &socket);
        edge.ready().await;
        let client = Client::new(&socket);
        let site = |name: &str, hosts: serde_json::Value, backend: &str, port: u16| {
            json!({"op": "put", "entity": {"kind": "site", "name": name, "hosts": hosts,
                "backends": [{"backend": backend, "port": port}]}})
        };
        let (p1, p2) = (origins[0].port, origins[1].port);
        let txn = json!({"ops": [
            {"op": "put", "entity": {"kind": "backend", "name": "b1", "addresses": ["127.0.0.51"]}},
            {"op": "put", "entity": {"kind": "backend", "name": "b2", "addresses": ["127.0.0.52"]}},
            {"op": "put", "entity": {"kind": "site", "name": "blog", "hosts": ["blog.test", "*.blog.test"],
                "aliases": ["www.blog.test"], "backends": [{"backend": "b1", "port": p1}]}},
            site("shop", json!(["shop.test"]), "b2", p2),
        ]});
        let a = client.post("/v1/transactions", &txn).await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "edge did not listen for HTTP on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        World { _dir: dir, edge, client, port, admin, origins }
    }

    async fn apply(&self, ops: serde_json::Value) {
        let a = self.client.post("/v1/transactions", &json!({ "ops": ops })).await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
    }

    async fn get(&self, host: &str, path: &str) -> Reply {
        get(self.port, host, path, &[]).await.unwrap()
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
async fn get(port: u16, host: &str, path: &str, extra: &[(&str, &str)]) -> std::io::Result<Reply> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("no head: {text:?}")))?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Reply { status, headers, body: body.to_string() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_with_aliases_wildcards_the_404_page_and_forwarding_headers() {
    let w = World::start().await;
    let r = w.get("blog.test", "/hello?x=1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("b1 "), "{r:?}");
    assert!(r.body.contains("uri=/hello?x=1"), "{r:?}");
    assert!(r.body.contains("xff=127.0.0.1 proto=http host=blog.test"), "{r:?}");
    // Host is case-insensitive and may carry a port; a wildcard matches.
    assert!(w.get("BLOG.test:80", "/").await.body.starts_with("b1 "));
    assert!(w.get("any.blog.test", "/").await.body.starts_with("b1 "));
    assert!(w.get("shop.test", "/").await.body.starts_with("b2 "));
    // An alias is a permanent redirect to the first host.
    let r = w.get("www.blog.test", "/a?b=1").await;
    assert_eq!((r.status, r.headers.get("location").map(String::as_str)), (301, Some("http://blog.test/a?b=1")));
    // No site: the edge's own 404 page, nothing proxied.
    let before = w.origins[0].requests() + w.origins[1].requests();
    let r = w.get("nobody.test", "/").await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("No site here"), "{r:?}");
    let r = w.get("bad host!", "/").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(w.origins[0].requests() + w.origins[1].requests(), before);
    // A forged X-Forwarded-For from an untrusted client is replaced.
    let r =
        get(w.port, "blog.test", "/", &[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")]).await.unwrap();
    assert!(r.body.contains("xff=127.0.0.1 proto=http "), "{r:?}");
    // The metrics count them.
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://127.0.0.1:{}/metrics", w.admin)])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&out.stdout);
    let ok = m.lines().find(|l| l.starts_with("edge_http_requests_total{status_class=\"2xx\"}"));
    assert!(ok.is_some_and(|l| !l.ends_with(" 0")), "{m}");
    let notfound = m.lines().find(|l| l.starts_with("edge_http_requests_total{status_class=\"4xx\"}"));
    assert!(notfound.is_some_and(|l| !l.ends_with(" 0")), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_modes_and_lists_switch_on_the_next_request() {
    let w = World::start().await;
    let p1 = w.origins[0].port;
    let blog = |extra: serde_json::Value| {
        let mut e = json!({"kind": "site", "name": "blog", "hosts": ["blog.test"],
            "backends": [{"backend": "b1", "port": p1}]});
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        json!([{"op": "put", "entity": e}])
    };
    let before = w.origins[0].requests();
    w.apply(blog(json!({"protection": "quarantine"}))).await;
    let r = w.get("blog.test", "/").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("suspended"), "{r:?}");
    w.apply(blog(json!({"protection": "maintenance"}))).await;
    let r = w.get("blog.test", "/").await;
    assert_eq!((r.status, r.headers.get("retry-after").map(String::as_str)), (503, Some("300")), "{r:?}");
    w.apply(blog(json!({"policy": {"deny": ["127.0.0.0/8"]}}))).await;
    assert_eq!(w.get("blog.test", "/").await.status, 403);
    assert_eq!(w.origins[0].requests(), before, "nothing reached the backend");
    w.apply(blog(json!({"policy": {"allow": ["127.0.0.1/32"]}}))).await;
    assert!(w.get("blog.test", "/").await.body.starts_with("b1 "));
    w.apply(blog(json!({}))).await;
    assert!(w.get("blog.test", "/").await.body.starts_with("b1 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_on_another_and_a_down_one_is_skipped() {
    let w = World::start().await;
    let (p1, p2) = (w.origins[0].port, w.origins[1].port);
    // b3's address has nothing listening: each connect there fails at once.
    let dead = free_port("127.0.0.53");
    w.apply(json!([
        {"op": "put", "entity": {"kind": "backend", "name": "b3", "addresses": ["127.0.0.53"]}},
        {"op": "put", "entity": {"kind": "site", "name": "blog", "hosts": ["blog.test"],
            "backends": [{"backend": "b3", "port": dead, "weight": 5}, {"backend": "b2", "port": p2}]}},
    ]))
    .await;
    for _ in 0..30 {
        let r = w.get("blog.test", "/").await;
        assert!(r.status == 200 && r.body.starts_with("b2 "), "{r:?}");
    }
    // Marked down: not tried at all. Every backend down: 503 with Retry-After.
    w.apply(json!([{"op": "set_backend_state", "backend": "b3", "state": "down"}])).await;
    assert!(w.get("blog.test", "/").await.body.starts_with("b2 "));
    w.apply(json!([{"op": "set_backend_state", "backend": "b2", "state": "down"}])).await;
    let r = w.get("blog.test", "/").await;
    assert_eq!((r.status, r.headers.contains_key("retry-after")), (503, true), "{r:?}");
    let _ = p1;
}

/// Four clients request the site continuously while it moves between the
/// two origins twenty times: no request fails, and every request that
/// started after a move was acknowledged is served by the new origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_under_load_fail_no_request_and_take_effect_on_the_next_one() {
    let w = World::start().await;
    let (p1, p2) = (w.origins[0].port, w.origins[1].port);
    let port = w.port;
    // Each move: (sent at, acknowledged at, the origin from then on).
    type Moves = Vec<(Instant, Option<Instant>, String)>;
    let start = Instant::now();
    let acks: std::sync::Arc<std::sync::Mutex<Moves>> =
        std::sync::Arc::new(std::sync::Mutex::new(vec![(start, Some(start), "b1".to_string())]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (acks, stop) = (acks.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut stale) = (0u32, Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                match get(port, "blog.test", "/", &[]).await {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        let origin = r.body.split(' ').next().unwrap_or("").to_string();
                        let moves = acks.lock().unwrap();
                        // The origin of the newest move acknowledged before
                        // this request started; or one of a move sent but
                        // not yet acknowledged when it started.
                        let expected = moves.iter().rev().find(|(_, acked, _)| acked.is_some_and(|a| a <= started));
                        let in_flight =
                            moves.iter().any(|(_, acked, o)| acked.is_none_or(|a| a > started) && *o == origin);
                        if expected.map(|(_, _, o)| o) != Some(&origin) && !in_flight {
                            stale.push(origin);
                        }
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed, stale)
        }));
    }
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (to, port) = if i % 2 == 0 { ("b2", p2) } else { ("b1", p1) };
        acks.lock().unwrap().push((Instant::now(), None, to.to_string()));
        w.apply(json!([{"op": "put", "entity": {"kind": "site", "name": "blog", "hosts": ["blog.test", "*.blog.test"],
            "aliases": ["www.blog.test"], "backends": [{"backend": to, "port": port}]}}]))
            .await;
        acks.lock().unwrap().last_mut().unwrap().1 = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut stale) = (0, Vec::new(), Vec::new());
    for t in workers {
        let (o, f, s) = t.await.unwrap();
        ok += o;
        failed.extend(f);
        stale.extend(s);
    }
    assert!(ok > 200, "{ok} requests");
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(stale.is_empty(), "{} served by the old origin after the ack: {stale:?}", stale.len());
    let _ = &w.edge;
}
