//! Interop: a real Prometheus (Debian package `prometheus`, installed by
//! scripts/test.sh) scrapes Edge's `/metrics` and sees the table's series,
//! including a version published after it started scraping.

#[path = "support/edge.rs"]
mod support;

use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::{eventually, Killed, TestEdge};

fn free_port() -> u16 {
    support::free_port("127.0.0.1")
}

/// Asks Prometheus for `query`; returns the first sample's value.
async fn query(port: u16, query: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let q = query.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl").args(["-sS", "-m", "5", "-G", &url, "--data-urlencode"]).arg(format!("query={q}")).output()
    })
    .await
    .ok()?
    .ok()?;
    let body: Value = serde_json::from_slice(&out.stdout).ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_table_metrics() {
    let binary = std::path::Path::new("/usr/bin/prometheus");
    assert!(binary.exists(), "Prometheus is not installed: run scripts/test.sh, or apt-get install prometheus");
    let edge = TestEdge::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: edge\n    static_configs:\n      - targets: ['{}']\n", edge.admin),
    )
    .unwrap();
    let port = free_port();
    let _prom = Killed(
        Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    let up = eventually(60, "Prometheus to scrape Edge", || query(port, "up{job=\"edge\"}")).await;
    assert_eq!(up, 1.0);
    let version = eventually(30, "edge_table_version", || query(port, "edge_table_version")).await;
    assert_eq!(version, 1.0);
    let sites = query(port, "edge_table_entities{kind=\"site\"}").await;
    assert_eq!(sites, Some(1.0));

    let moved = edge.client.post("/v1/sites/alice-blog/move", &json!({"to": "mosh40"})).await.unwrap();
    assert_eq!(moved.body["version"], 2);
    eventually(30, "the new version in Prometheus", || async {
        (query(port, "edge_table_version").await? == 2.0).then_some(())
    })
    .await;
    let applied = query(port, "edge_table_transactions_total{result=\"applied\"}").await;
    assert_eq!(applied, Some(2.0)); // the seed and the move
    let published = query(port, "edge_table_publish_seconds_count").await;
    assert_eq!(published, Some(2.0));
    edge.stop().await;
}

/// Every series the shipped Grafana dashboard queries is one Edge exposes
/// (a renamed metric would otherwise leave an empty panel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_exposed_series() {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = format!(
        "[http]\nlisten = [\"127.0.0.1:{}\"]\ntls_listen = [\"127.0.0.1:{}\"]\nshutdown_drain_secs = 1\n",
        free(),
        free()
    );
    let edge = TestEdge::start(&format!(
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n[ssh]\nlisten = [\"127.0.0.1:0\"]\n[mail]\nimap = [\"127.0.0.1:0\"]\nmx = [\"127.0.0.1:0\"]\n{http}"
    ))
    .await;
    // One query over TCP, so the DNS series have a sample (the TCP recorder
    // flushes when the connection ends).
    let dns = edge.dns.unwrap();
    let dig = tokio::task::spawn_blocking(move || {
        Command::new("dig")
            .args(["@127.0.0.1", "-p", &dns.port().to_string(), "+tcp", "+short", "alice_wp.mysql.mayfirst.local"])
            .output()
    })
    .await
    .unwrap()
    .expect("dig runs (scripts/install-deps.sh test installs it)");
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), "127.0.0.12");
    // Health checks create their series on their first round.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let url = format!("http://{}/metrics", edge.admin);
        let out = tokio::task::spawn_blocking(move || Command::new("curl").args(["-sS", "-m", "5", &url]).output())
            .await
            .unwrap()
            .expect("curl");
        let metrics = String::from_utf8(out.stdout).unwrap();
        if metrics.contains("edge_http_upstream_healthy{") || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let exposed: std::collections::BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/grafana/edge.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("edge_") {
                    assert!(
                        exposed.contains(word),
                        "panel {:?} queries {word}, which Edge does not expose",
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 16, "only {checked} series checked");
    edge.stop().await;
}
