//! Builds the eBPF object (the `cwatch-ebpf` crate, for bpfel-unknown-none,
//! BTF on) with aya-build and leaves it in OUT_DIR, where `probe.rs` embeds
//! it: one file to ship.
//!
//! The toolchain is chosen by `cwatch-build` (rustup nightly with rust-src, or
//! Debian's rustc-web with a prebuilt BPF core); when neither is present the
//! build stops with one message naming what is missing and how to get it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={}", cwatch_build::TOOLCHAIN_ENV);
    let detection = cwatch_build::detect();
    let toolchain = match (&detection.toolchain, detection.is_complete()) {
        (Some(toolchain), true) => toolchain.clone(),
        _ => return Err(anyhow!("{}", detection.missing_help())),
    };
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "cwatch-ebpf")
        .ok_or_else(|| anyhow!("cwatch-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // aya-build relays every line the nested cargo prints as a build-script
    // warning, and cargo replays those on every later build: keep the nested
    // cargo to real diagnostics.
    // SAFETY: the build script is single-threaded; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    if let Some(value) = toolchain.rustc_bootstrap() {
        // aya-build passes its environment to the nested cargo. Scoped to the
        // two crates built for BPF (aya_ebpf, and cwatch_ebpf's inline
        // assembly): nothing else gets unstable features.
        // SAFETY: single-threaded, as above.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", value) };
    }
    let toolchain_arg = toolchain.rustup_arg();
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain_arg))
        .with_context(|| format!("building the eBPF object with {toolchain}"))
}
