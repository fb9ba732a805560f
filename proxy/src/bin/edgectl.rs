//! `edgectl`: the admin CLI for Edge's routing table (see `edgectl --help`).

use std::process::ExitCode;

use clap::Parser;
use proxy::edgectl::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgectl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("edgectl: {message}");
            ExitCode::FAILURE
        }
    }
}
