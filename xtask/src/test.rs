//! `cargo xtask test`: the whole suite. Unit tests first (no privileges),
//! then the kernel tests, which load the real probes and need root, then the
//! deploy tests (sd_notify, capabilities, systemd unit, alert rules, a real
//! Prometheus, the dashboard, the .deb, the Kubernetes manifests). Those are
//! never skipped silently: without root this fails and says how to run them;
//! under CI=true it fails the build.
//!
//! Every daemon the kernel and deploy tests start runs with exactly the
//! capabilities of deploy/systemd/cwatch.service (through setpriv), which
//! proves the unit's set is enough; `--daemon-caps all` runs them as plain
//! root instead.
use anyhow::{Context as _, bail};

use crate::{deploy_tools, package, setup, util};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DaemonCaps {
    /// Exactly the systemd unit's CapabilityBoundingSet=.
    Unit,
    /// Every capability root has.
    All,
}

#[derive(clap::Args)]
pub struct Options {
    /// Only the unit tests (no root needed).
    #[arg(long, conflicts_with_all = ["kernel", "deploy"])]
    pub unit: bool,
    /// Only the kernel tests.
    #[arg(long, conflicts_with = "deploy")]
    pub kernel: bool,
    /// Only the deploy tests.
    #[arg(long)]
    pub deploy: bool,
    /// The capabilities the test daemons run with.
    #[arg(long, value_enum, default_value = "unit")]
    pub daemon_caps: DaemonCaps,
    /// Passed to the test binaries, e.g. a test name to filter on.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The unit's capability bounding set, comma-separated (`CAP_BPF,…`).
pub fn unit_capabilities() -> anyhow::Result<String> {
    let path = util::workspace_root().join("deploy/systemd/cwatch.service");
    let unit =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .with_context(|| format!("{} has no CapabilityBoundingSet=", path.display()))?;
    Ok(caps.split_whitespace().collect::<Vec<_>>().join(","))
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::ensure_build_toolchain(false)?;
    if !opts.kernel && !opts.deploy {
        util::run(util::cargo().args(["test", "--quiet"]))?;
    }
    if opts.unit {
        return Ok(());
    }
    let root = util::is_root();
    if !root {
        let why = "the kernel and deploy tests load eBPF programs and install \
                   packages, and need root";
        if util::in_ci() {
            bail!("CI=true: {why}; refusing to skip them");
        }
        if which::which("sudo").is_err() {
            bail!("{why} and there is no sudo: run as root, or `cargo xtask test --unit`");
        }
        eprintln!("xtask: not root: the kernel and deploy tests run through `sudo -E`");
    }
    setup::ensure_test_tools(false)?;
    let deb = if opts.kernel {
        None
    } else {
        deploy_tools::ensure(false)?;
        Some(package::run()?)
    };
    util::run(util::cargo().args([
        "build",
        "--quiet",
        "--package",
        "cwatch-daemon",
        "--bin",
        "cwatch",
        "--package",
        "cwatch-testkit",
        "--bin",
        "cwatch-load",
        "--bin",
        "cwatch-deny",
    ]))?;
    let cwatch = util::target_dir().join("debug").join("cwatch");
    let caps = match opts.daemon_caps {
        DaemonCaps::Unit => unit_capabilities()?,
        DaemonCaps::All => String::new(),
    };
    if !caps.is_empty() {
        eprintln!("xtask: test daemons run with exactly the unit's capabilities: {caps}");
    }
    let binaries: &[&str] = match (opts.kernel, opts.deploy) {
        (true, _) => &["kernel"],
        (_, true) => &["deploy"],
        _ => &["kernel", "deploy"],
    };
    for binary in binaries {
        let mut cmd = util::cargo();
        cmd.args([
            "test",
            "--package",
            "cwatch-testkit",
            "--features",
            "kernel-tests",
            "--test",
            binary,
        ]);
        if !root {
            // Only the test binary runs as root, not the build.
            cmd.args(["--config", "target.'cfg(all())'.runner = ['sudo', '-E']"]);
        }
        // One at a time: every daemon sees every socket on the host, and the
        // counters the tests compare are host-wide.
        cmd.args(["--", "--test-threads=1"])
            .args(&opts.args)
            .env("CWATCH_BIN", &cwatch)
            .env("CWATCH_DAEMON_CAPS", &caps)
            .env("CWATCH_NODE_TOOLS", deploy_tools::node_tools_dir());
        if let Some(deb) = &deb {
            cmd.env("CWATCH_DEB", deb);
        }
        util::run(&mut cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unit_names_its_capabilities() {
        let caps = super::unit_capabilities().unwrap();
        assert!(caps.split(',').all(|c| c.starts_with("CAP_")), "{caps}");
        assert!(caps.contains("CAP_BPF"), "{caps}");
    }
}
