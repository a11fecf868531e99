//! `cargo xtask setup`: makes sure this machine can build the eBPF object and
//! run the kernel tests, installing what is missing when we are root, or
//! printing the exact commands when we are not. With everything present it
//! only looks (well under 2 s).
use std::time::Instant;

use anyhow::bail;
use cwatch_build::{DEBIAN_PACKAGES, LLVM_PREFIX};

use crate::util::{self, apt_install, can_install};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Only report; install nothing.
    #[arg(long)]
    pub check: bool,
}

/// The tools the kernel tests call, with the Debian package providing each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ss", "iproute2"),
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("strace", "strace"),
    // Loopback kept out of conntrack where it is active (crate::conntrack).
    ("nft", "nftables"),
];

pub fn run(opts: &Options) -> anyhow::Result<()> {
    ensure_build_toolchain(opts.check)?;
    ensure_test_tools(opts.check)?;
    ensure_stacks_tools(opts.check)?;
    crate::deploy_tools::ensure(opts.check)?;
    crate::container_tools::ensure(opts.check)?;
    ensure_bench_tools(opts.check)?;
    Ok(())
}

/// Ensures the eBPF object can be built; returns quickly when it can.
pub fn ensure_build_toolchain(check_only: bool) -> anyhow::Result<()> {
    let found = cwatch_build::detect();
    if found.is_complete() {
        if let Some(toolchain) = &found.toolchain {
            eprintln!("xtask: eBPF toolchain: {toolchain}");
        }
        return Ok(());
    }
    if check_only || !can_install() {
        bail!("{}", found.missing_help());
    }
    if found.toolchain.is_none() || found.bpf_linker.is_none() {
        // The Debian packages give both the BPF core and the LLVM that
        // bpf-linker is built against.
        apt_install(DEBIAN_PACKAGES)?;
    }
    if found.bpf_linker.is_none() {
        install_bpf_linker()?;
    }
    let again = cwatch_build::detect();
    if !again.is_complete() {
        bail!("installed, but still: {}", again.missing_help());
    }
    Ok(())
}

pub fn ensure_test_tools(check_only: bool) -> anyhow::Result<()> {
    install_for(&missing(TEST_TOOLS), "the kernel tests", check_only)
}

/// The Debian packages of the `(tool, package)` pairs whose tool is not
/// on PATH.
fn missing(tools: &[(&str, &'static str)]) -> Vec<&'static str> {
    let mut packages: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| which::which(tool).is_err())
        .map(|&(_, package)| package)
        .collect();
    packages.dedup();
    packages
}

/// Installs `packages` (as root, unless `check_only`), which `who` needs;
/// without them, one line saying how.
fn install_for(packages: &[&str], who: &str, check_only: bool) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if check_only || !can_install() {
        bail!(
            "{who}: missing {}; install with: apt-get install -y {}",
            packages.join(", "),
            packages.join(" ")
        );
    }
    apt_install(packages)
}

/// What the cwatch-stacks capture tests build their test programs with,
/// and check their names against (binutils reads the binaries on its own).
const STACKS_TOOLS: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("g++", "g++"),
    ("go", "golang-go"),
    ("strip", "binutils"),
    ("nm", "binutils"),
    ("addr2line", "binutils"),
    ("readelf", "binutils"),
];

/// Ensures the compilers and binutils of the cwatch-stacks tests are there.
pub fn ensure_stacks_tools(check_only: bool) -> anyhow::Result<()> {
    install_for(
        &missing(STACKS_TOOLS),
        "the cwatch-stacks tests",
        check_only,
    )
}

/// What `cargo xtask bench` runs beside cwatch, with its Debian package.
const BENCH_TOOLS: &[(&str, &str)] = &[
    ("bpftrace", "bpftrace"),
    ("prometheus-node-exporter", "prometheus-node-exporter"),
    ("ss", "iproute2"),
    ("nft", "nftables"),
];

/// The chart's font, read by file (no font lookup).
const BENCH_FONT: (&str, &str) = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "fonts-dejavu-core",
);

/// Ensures the tools and the font the bench needs are installed.
pub fn ensure_bench_tools(check_only: bool) -> anyhow::Result<()> {
    let mut packages = missing(BENCH_TOOLS);
    if !std::path::Path::new(BENCH_FONT.0).is_file() {
        packages.push(BENCH_FONT.1);
    }
    install_for(&packages, "the bench", check_only)
}

/// bpf-linker, built against Debian's LLVM 22 (no download of a prebuilt
/// LLVM, which this network does not allow).
fn install_bpf_linker() -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("xtask: building bpf-linker against LLVM 22 (about a minute)…");
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = util::cargo();
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        "0.13.0",
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("PATH", path)
    .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
    .env("LLVM_PREFIX", LLVM_PREFIX);
    util::run(&mut cmd)?;
    eprintln!("xtask: bpf-linker installed in {:.0?}", started.elapsed());
    Ok(())
}
