//! `cargo xtask run [--release] [-- ARGS]`: builds, then runs `cwatch run`
//! with ARGS as root (through `sudo -E` when we are not root).
use std::process::Command;

use crate::{build, util};

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
    /// Arguments for `cwatch run`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let binary = build::run(&build::Options {
        release: opts.release,
    })?;
    let mut cmd = if util::is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    cmd.arg("run").args(&opts.args);
    util::run(&mut cmd)
}
