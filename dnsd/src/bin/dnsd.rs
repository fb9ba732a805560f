//! `dnsd`: the internal DNS server on its own, beside a running `edge`.
//!
//! It reads the `[dns]` section (and where the store is) from the same
//! `edge.toml`, opens the embedded store read-only as a follower, and
//! publishes each version `edge` commits within `--poll-ms`. Changes go
//! through `edge`'s control socket as always; this process only answers.
//! Inside `edge`, dnsd runs without this binary (the `[dns]` section is
//! enough).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use dnsd::{DnsConfig, DnsMetrics, Dnsd};
use routing_table::{SqliteStore, Table, TableMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "dnsd", version, about = "Edge's internal DNS server, following edge's store")]
struct Cli {
    /// The edge configuration: `[dns]`, `[edge] data_dir` and `[store]` are read.
    #[arg(long, default_value = "config/edge.toml")]
    config: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// How often to look for new versions in the store, in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> std::process::ExitCode {
    eprintln!("dnsd: {message}");
    std::process::ExitCode::FAILURE
}

/// The parts of `edge.toml` dnsd needs; `edge check-config` checks the rest.
fn read_config(path: &Path) -> Result<(PathBuf, DnsConfig), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let str_at = |section: &str, key: &str| file.get(section).and_then(|s| s.get(key)).and_then(|v| v.as_str());
    let data_dir = PathBuf::from(str_at("edge", "data_dir").unwrap_or("var"));
    if let Some(kind) = str_at("store", "kind").filter(|k| *k != "sqlite") {
        return Err(format!("{}: `store.kind` = \"{kind}\": dnsd follows the sqlite store only", path.display()));
    }
    let store = data_dir.join(str_at("store", "path").unwrap_or("edge.db"));
    let dns = file.get("dns").cloned().ok_or_else(|| format!("{}: no [dns] section", path.display()))?;
    let dns: DnsConfig = dns.try_into().map_err(|e| format!("{}: [dns]: {e}", path.display()))?;
    Ok((store, dns))
}

async fn run(cli: Cli) -> Result<(), String> {
    let (store_path, dns) = read_config(&cli.config)?;
    let settings = dns.validate().map_err(|(key, reason)| format!("{}: `{key}`: {reason}", cli.config.display()))?;
    if !store_path.exists() {
        return Err(format!("{}: no store yet; start edge first, which creates it", store_path.display()));
    }
    let store = SqliteStore::open(&store_path).map_err(|e| e.to_string())?;
    let registry = prometheus::Registry::new();
    let table_metrics = TableMetrics::register(&registry).map_err(|e| e.to_string())?;
    let table = Table::follow(Box::new(store), table_metrics, Duration::from_millis(cli.poll_ms.max(1)))
        .map_err(|e| e.to_string())?;
    let metrics = DnsMetrics::register(&registry).map_err(|e| e.to_string())?;
    let server = Dnsd::bind(settings, table.clone(), metrics).await.map_err(|e| e.to_string())?;
    tracing::info!(version = table.load().version(), store = %store_path.display(), "dnsd following the store");
    let (stop, shutdown) = watch::channel(false);
    if let Some(addr) = cli.metrics {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics {addr}: {e}"))?;
        tokio::spawn(serve_metrics(listener, registry));
    }
    let serving = tokio::spawn(server.serve(shutdown));
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(())
}

/// A minimal `/metrics` responder: one request per connection.
async fn serve_metrics(listener: tokio::net::TcpListener, registry: prometheus::Registry) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let (status, body) = if buf[..n].starts_with(b"GET /metrics ") {
                let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default();
                ("200 OK", text)
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}
