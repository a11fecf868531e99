//! `cargo xtask build`: the eBPF object (built by cwatch-daemon's build.rs
//! with the toolchain `setup` checked) and the `cwatch` binary embedding it.
use std::{path::PathBuf, time::Instant};

use crate::{setup, util};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Builds and returns the path of the `cwatch` binary.
pub fn run(opts: &Options) -> anyhow::Result<PathBuf> {
    setup::ensure_build_toolchain(false)?;
    let started = Instant::now();
    let mut cmd = util::cargo();
    cmd.args(["build", "--package", "cwatch-daemon", "--bin", "cwatch"]);
    if opts.release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let profile = if opts.release { "release" } else { "debug" };
    let binary = util::target_dir().join(profile).join("cwatch");
    eprintln!(
        "xtask: built {} in {:.1?}",
        binary.display(),
        started.elapsed()
    );
    Ok(binary)
}
