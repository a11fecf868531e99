//! `cwatch`: parse the command line, set up logging, run, map errors to an
//! exit code (2: bad flags or config; 1: anything else).
use std::process::ExitCode;

use clap::Parser as _;
use cwatch_daemon::config::{self, Cli, Command, Config};

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit 2 with clap's message
    init_logging();
    let result = match &cli.command {
        Command::Run(args) => match Config::from_run_args(args) {
            Ok(config) => tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(cwatch_daemon::run(config))),
            Err(err) => return usage_error(&err),
        },
        Command::Ls(args) => match config::ls_target(args) {
            Ok(target) => cwatch_daemon::ls::run(args, target),
            Err(err) => return usage_error(&err),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cwatch: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(err: &config::ConfigError) -> ExitCode {
    eprintln!("cwatch: {err}");
    ExitCode::from(2)
}

/// Logs go to stderr (journald picks them up); `RUST_LOG` sets the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
