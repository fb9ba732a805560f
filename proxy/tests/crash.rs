//! Crash safety: SIGKILL the `edge` process repeatedly while a client
//! streams transactions. After each restart every acknowledged version is
//! present, versions are contiguous, and no transaction is half applied
//! (each writes a pair of sites; both or neither exist).

#[path = "support/edge.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proxy::control::client::Client;
use serde_json::json;
use support::{eventually, write_config, EdgeProcess};

const ROUNDS: usize = 6;

fn pair(k: usize) -> serde_json::Value {
    let site = |side: &str| json!({"op": "put", "entity": {"kind": "site", "name": format!("crash-{side}-{k}"), "hosts": [format!("{side}{k}.crash.test")], "backends": [{"backend": "mosh12"}]}});
    json!({"comment": format!("pair {k}"), "ops": [site("a"), site("b")]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_acknowledged_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let socket = dir.path().join("var/control.sock");
    let mut acked: BTreeMap<usize, u64> = BTreeMap::new(); // pair -> version
    let mut next = 0usize;
    for round in 0..ROUNDS {
        let mut edge = EdgeProcess::spawn(&config, &socket);
        let status = edge.ready().await;
        let version = status.body["version"].as_u64().unwrap();
        let last_acked = acked.values().max().copied().unwrap_or(1);
        assert!(
            version >= last_acked,
            "round {round}: restarted at version {version}, but {last_acked} was acknowledged"
        );
        verify(&Client::new(&socket), &acked, version).await;

        // Stream transactions; kill the process while they flow, after a
        // different number of acknowledgements each round.
        let client = Client::new(&socket);
        let count = Arc::new(AtomicUsize::new(0));
        let acks = count.clone();
        let streamer = tokio::spawn(async move {
            let mut done = Vec::new();
            let mut k = next;
            loop {
                match client.post("/v1/transactions", &pair(k)).await {
                    Ok(a) if a.status.is_success() => {
                        done.push((k, a.body["version"].as_u64().unwrap()));
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(a) => panic!("transaction refused: {:?}", a.body),
                    Err(_) => break, // the process is gone
                }
                k += 1;
            }
            (done, k)
        });
        let target = 5 + 37 * round;
        eventually(60, "acknowledged transactions", || {
            let n = count.load(Ordering::SeqCst);
            async move { (n >= target).then_some(()) }
        })
        .await;
        edge.kill();
        let (done, k) = streamer.await.unwrap();
        assert!(done.len() >= target, "round {round}: {} acknowledged", done.len());
        acked.extend(done);
        next = k + 1;
    }
    let mut edge = EdgeProcess::spawn(&config, &socket);
    let status = edge.ready().await;
    let version = status.body["version"].as_u64().unwrap();
    verify(&Client::new(&socket), &acked, version).await;
    println!("{} acknowledged transactions over {ROUNDS} SIGKILLs; final version {version}", acked.len());
    assert!(edge.terminate().success());
}

async fn verify(client: &Client, acked: &BTreeMap<usize, u64>, version: u64) {
    let sites = client.get("/v1/table/sites").await.unwrap().body;
    let names: std::collections::BTreeSet<String> =
        sites["entities"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect();
    for (k, v) in acked {
        assert!(
            names.contains(&format!("crash-a-{k}")) && names.contains(&format!("crash-b-{k}")),
            "acknowledged pair {k} (version {v}) is missing"
        );
    }
    for name in &names {
        if let Some(k) = name.strip_prefix("crash-a-") {
            assert!(names.contains(&format!("crash-b-{k}")), "half-applied transaction: {name} without its pair");
        }
        if let Some(k) = name.strip_prefix("crash-b-") {
            assert!(names.contains(&format!("crash-a-{k}")), "half-applied transaction: {name} without its pair");
        }
    }
    // History is contiguous up to the current version, and each acknowledged
    // version carries the pair it acknowledged.
    let mut seen = Vec::new();
    let mut before = version;
    while before > 0 {
        let page = client.get(&format!("/v1/history?limit=1000&before={before}")).await.unwrap().body;
        let entries = page["entries"].as_array().unwrap().clone();
        if entries.is_empty() {
            break;
        }
        for e in &entries {
            seen.push((e["version"].as_u64().unwrap(), e["comment"].as_str().unwrap_or("").to_string()));
        }
        before = entries.last().unwrap()["version"].as_u64().unwrap() - 1;
    }
    seen.reverse();
    let versions: Vec<u64> = seen.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=version).collect::<Vec<_>>(), "history has gaps");
    for (k, v) in acked {
        assert_eq!(seen[(*v - 1) as usize].1, format!("pair {k}"), "version {v}");
    }
}
