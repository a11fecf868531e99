//! `cargo xtask lint`: formatting and clippy with warnings denied, for the
//! userspace crates and (checked for the host, as aya-template does) the
//! eBPF crate.
use crate::{setup, util};

pub fn run() -> anyhow::Result<()> {
    setup::ensure_build_toolchain(false)?;
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    // With the root-only test binaries (kernel, deploy) included.
    util::run(util::cargo().args([
        "clippy",
        "--all-targets",
        "--features",
        "cwatch-testkit/kernel-tests",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate alone (its own feature set), non-test targets; a
    // separate target dir keeps feature unification from rebuilding the rest.
    let ebpf_dir = util::target_dir().join("clippy-ebpf");
    util::run(
        util::cargo()
            .args(["clippy", "--package", "cwatch-ebpf", "--target-dir"])
            .arg(ebpf_dir)
            .args(["--", "-C", "panic=abort", "-D", "warnings"]),
    )?;
    Ok(())
}
