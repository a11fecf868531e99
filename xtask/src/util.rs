//! What every command shares: running commands loudly (each is echoed before
//! it runs), finding the workspace and its target directory, and installing
//! Debian packages.
use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where cargo puts its output (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo` as invoked by the user (keeps the toolchain `cargo xtask` ran with).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn shown(cmd: &Command) -> String {
    let mut s = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            s += &format!("{}={} ", key.to_string_lossy(), value.to_string_lossy());
        }
    }
    s += &cmd.get_program().to_string_lossy();
    for arg in cmd.get_args() {
        s += " ";
        s += &arg.to_string_lossy();
    }
    s
}

/// Runs `cmd` with inherited stdio, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = shown(cmd);
    eprintln!("xtask: $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Whether this process may install packages (root, with apt-get).
pub fn can_install() -> bool {
    is_root() && which::which("apt-get").is_ok()
}

/// `apt-get update`, at most once per run.
pub fn apt_update() -> anyhow::Result<()> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if !UPDATED.swap(true, Ordering::Relaxed) {
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    Ok(())
}

pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!(
        "xtask: installing Debian packages {} (about a minute)…",
        packages.join(" ")
    );
    apt_update()?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install)?;
    eprintln!("xtask: packages installed in {:.0?}", started.elapsed());
    Ok(())
}
