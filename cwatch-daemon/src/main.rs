//! `cwatch`: parse the command line and hand it to [`commands::run`], which
//! maps every outcome to an exit code (2: bad flags, values or config; 1:
//! anything else). clap's own usage errors exit 2 as well.
use std::process::ExitCode;

use clap::Parser as _;
use cwatch_daemon::cli::{Cli, commands};

fn main() -> ExitCode {
    commands::run(Cli::parse())
}
