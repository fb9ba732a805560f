//! `loadtest`: load with moves during it; see `loadtest/README.md`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(name = "loadtest", version, about = "Load every protocol while moving routes; count failed and misrouted")]
struct Cli {
    /// Target a running edge through its config (default: start one in-process).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seconds of load.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// DNS queries per second.
    #[arg(long, default_value_t = 2000)]
    dns_rate: u32,
    /// DNS queries in flight at most.
    #[arg(long, default_value_t = 32)]
    dns_concurrency: usize,
    /// SSH logins per second through the edge's SSH forwarder (0: none).
    #[arg(long, default_value_t = 40)]
    ssh_rate: u32,
    /// SSH logins in flight at most.
    #[arg(long, default_value_t = 8)]
    ssh_concurrency: usize,
    /// IMAP logins per second through the edge's mail forwarder (0: none).
    #[arg(long, default_value_t = 100)]
    imap_rate: u32,
    /// IMAP logins in flight at most.
    #[arg(long, default_value_t = 8)]
    imap_concurrency: usize,
    /// Moves per second (site moves, member moves, evacuations).
    #[arg(long, default_value_t = 15.0)]
    move_rate: f64,
    #[arg(long, default_value_t = 200)]
    members: usize,
    #[arg(long, default_value_t = 8)]
    backends: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Query this DNS server instead of the edge's own dnsd.
    #[arg(long)]
    dns: Option<std::net::SocketAddr>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let opts = loadtest::Options {
        config: cli.config,
        duration: Duration::from_secs_f64(cli.duration.max(0.1)),
        dns_rate: cli.dns_rate,
        dns_concurrency: cli.dns_concurrency,
        move_rate: cli.move_rate,
        members: cli.members,
        backends: cli.backends,
        seed: cli.seed,
        progress: !cli.quiet,
        dns: cli.dns,
        ssh_rate: cli.ssh_rate,
        ssh_concurrency: cli.ssh_concurrency,
        imap_rate: cli.imap_rate,
        imap_concurrency: cli.imap_concurrency,
    };
    let report = match loadtest::run(opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if let Some(path) = cli.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("loadtest: {}: {e}", path.display());
            return std::process::ExitCode::from(2);
        }
    }
    let (failed, misrouted) = report.errors();
    if failed + misrouted + report.moves.failed > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
