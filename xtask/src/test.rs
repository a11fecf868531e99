//! `cargo xtask test`: the whole suite. Unit tests first (no privileges),
//! then the kernel tests, which load the real probes and need root. Those are
//! never skipped silently: without root this fails and says how to run them;
//! under CI=true it fails the build.
use anyhow::bail;

use crate::{build, setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Only the unit tests (no root needed).
    #[arg(long, conflicts_with = "kernel")]
    pub unit: bool,
    /// Only the kernel tests.
    #[arg(long)]
    pub kernel: bool,
    /// Passed to the kernel test binary, e.g. a test name to filter on.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::ensure_build_toolchain(false)?;
    if !opts.kernel {
        util::run(util::cargo().args(["test", "--quiet"]))?;
    }
    if opts.unit {
        return Ok(());
    }
    let root = util::is_root();
    if !root {
        let why = "the kernel tests load eBPF programs and need root \
                   (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)";
        if util::in_ci() {
            bail!("CI=true: {why}; refusing to skip them");
        }
        if which::which("sudo").is_err() {
            bail!("{why} and there is no sudo: run as root, or `cargo xtask test --unit`");
        }
        eprintln!("xtask: not root: the kernel tests run through `sudo -E`");
    }
    setup::ensure_test_tools(false)?;
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
    ]))?;
    let cwatch = build::target_dir().join("debug").join("cwatch");
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--package",
        "cwatch-testkit",
        "--features",
        "kernel-tests",
        "--test",
        "kernel",
    ]);
    if !root {
        // Only the test binary runs as root, not the build.
        cmd.args(["--config", "target.'cfg(all())'.runner = ['sudo', '-E']"]);
    }
    // One at a time: every daemon sees every socket on the host, and the
    // counters the tests compare are host-wide.
    cmd.args(["--", "--test-threads=1"])
        .args(&opts.args)
        .env("CWATCH_BIN", cwatch);
    util::run(&mut cmd)
}
