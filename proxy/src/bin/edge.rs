//! `edge`: runs every Edge service from one configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxy::{Config, Edge};

/// mimalloc: the proxy allocates per request (headers, buffers); glibc's
/// malloc took about 10% of the CPU in a profile of HTTP proxying.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "edge", version, about = "Edge routing proxy: every listener reads one routing table")]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "config/edge.toml", env = "EDGE_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service (the default).
    Run {
        /// Take the HTTP listeners over from the edge running with this
        /// configuration (send it SIGQUIT once this one waits), then bind
        /// the other listeners as it releases them.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check the configuration (and its seed file) and exit.
    CheckConfig,
    /// Copy the table into an empty store: `--to etcd` from the embedded
    /// store, `--to sqlite` from etcd (both as configured in `[store]`).
    Migrate {
        #[arg(long, value_parser = ["etcd", "sqlite"])]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::CheckConfig => match proxy::app::check(&config) {
            Ok(()) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edge: {e}");
                ExitCode::from(2)
            }
        },
        Command::Migrate { to } => match proxy::app::migrate(&config, &to) {
            Ok(line) => {
                println!("edge: {line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edge migrate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { upgrade } => run(config, upgrade),
    }
}

fn run(config: Config, upgrade: bool) -> ExitCode {
    init_tracing(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = match proxy::signals::install(config.path.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("edge: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        match Edge::start_upgrading(&config, upgrade).await {
            Ok(edge) => {
                edge.serve(signals.shutdown, signals.reload).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "edge could not start");
                eprintln!("edge: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}
