//! `cargo xtask package`: the .deb (cargo-deb, metadata in
//! cwatch-daemon/Cargo.toml): release binary, systemd unit, default config,
//! alert rules, scrape config, dashboard, README, maintainer scripts from
//! deploy/debian/.
use std::{path::PathBuf, process::Stdio, time::Instant};

use anyhow::{Context as _, bail};

use crate::{deploy_tools, setup, util};

/// Builds the .deb and returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    setup::ensure_build_toolchain(false)?;
    deploy_tools::ensure(false)?;
    let started = Instant::now();
    let mut cmd = util::cargo();
    cmd.args(["deb", "--package", "cwatch-daemon"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("xtask: $ cargo deb --package cwatch-daemon");
    let out = cmd
        .spawn()
        .context("cannot start `cargo deb`")?
        .wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`cargo deb --package cwatch-daemon` failed ({})",
            out.status
        );
    }
    // cargo-deb prints the path of the package it wrote, last.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb did not name its .deb: {stdout}"))?;
    if !deb.is_file() {
        bail!("cargo deb named {} but it does not exist", deb.display());
    }
    eprintln!(
        "xtask: built {} in {:.0?}",
        deb.display(),
        started.elapsed()
    );
    Ok(deb)
}
