//! `cargo xtask image`: the OCI image the DaemonSet runs. The release
//! `cwatch` (eBPF object embedded) is linked statically against glibc
//! (`-C target-feature=+crt-static`), checked to have no ELF interpreter and
//! put `FROM scratch` by buildah with `deploy/container/Containerfile`:
//! nothing is pulled. The image goes to `target/image/` as an OCI archive
//! named `localhost/cwatch:<version>` (the DaemonSet's image) with its
//! manifest digest beside it. The tools come from `container_tools.rs`.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{container_tools, setup, util};

/// The image's name: `localhost/` is where podman, buildah and CRI-O keep
/// local images, and containerd keeps the full name it finds in the
/// archive, so the same reference works loaded from the archive anywhere.
pub const REPOSITORY: &str = "localhost/cwatch";

/// `localhost/cwatch:<version of the workspace>`.
pub fn reference() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// What `cargo xtask image` made.
pub struct Image {
    pub archive: PathBuf,
    pub reference: String,
    /// The manifest digest, `sha256:…`.
    pub digest: String,
}

/// The host's Rust target: the image is for the machine that builds it.
fn host_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// Builds the image and returns where it is.
pub fn run() -> anyhow::Result<Image> {
    setup::ensure_build_toolchain(false)?;
    container_tools::ensure(false)?;
    let started = Instant::now();
    let binary = build_static()?;
    check_static(&binary)?;

    let dir = util::target_dir().join("image");
    let context = dir.join("context");
    if context.exists() {
        std::fs::remove_dir_all(&context)
            .with_context(|| format!("removing {}", context.display()))?;
    }
    std::fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    std::fs::copy(&binary, context.join("cwatch"))
        .with_context(|| format!("copying {} into the build context", binary.display()))?;

    let reference = reference();
    let containerfile = util::workspace_root().join("deploy/container/Containerfile");
    util::run(
        Command::new("buildah")
            .args(["build", "--quiet", "--format", "oci", "--timestamp", "0"])
            .arg(format!("--build-arg=VERSION={}", env!("CARGO_PKG_VERSION")))
            .arg("--file")
            .arg(&containerfile)
            .args(["--tag", &reference])
            .arg(&context),
    )?;

    let archive = dir.join(format!("cwatch-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    let digest_file = digest_path(&archive);
    for old in [&archive, &digest_file] {
        if old.exists() {
            std::fs::remove_file(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    util::run(
        Command::new("buildah")
            .args(["push", "--quiet", "--digestfile"])
            .arg(&digest_file)
            .arg(&reference)
            .arg(format!("oci-archive:{}:{reference}", archive.display())),
    )?;
    let digest = std::fs::read_to_string(&digest_file)
        .with_context(|| format!("reading {}", digest_file.display()))?
        .trim()
        .to_string();
    if !digest.starts_with("sha256:") {
        bail!("{} holds {digest:?}, not a digest", digest_file.display());
    }
    // One line at the end of the file, as sha256sum-style tools expect.
    std::fs::write(&digest_file, format!("{digest}\n"))?;

    let mib = |path: &Path| -> anyhow::Result<f64> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        Ok(len as f64 / (1024.0 * 1024.0))
    };
    eprintln!(
        "xtask: image {reference} in {:.0?}: {} ({:.1} MiB; the binary alone {:.1} MiB), digest {digest} ({})",
        started.elapsed(),
        archive.display(),
        mib(&archive)?,
        mib(&binary)?,
        digest_file.display(),
    );
    Ok(Image {
        archive,
        reference,
        digest,
    })
}

/// `cwatch-0.1.0.oci.tar` → `cwatch-0.1.0.oci.tar.digest`.
pub fn digest_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".digest");
    PathBuf::from(name)
}

/// The release binary, static and stripped, in `target/<host>/release/`.
/// The flags go through the target-specific variable, so that build scripts
/// and proc macros stay dynamic (a static proc macro cannot be loaded), and
/// the nested eBPF build in cwatch-daemon/build.rs gets its own flags from
/// aya-build as before.
fn build_static() -> anyhow::Result<PathBuf> {
    let target = host_target();
    let flags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.to_ascii_uppercase().replace('-', "_")
    );
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "--package", "cwatch-daemon", "--bin"])
        .arg("cwatch")
        .args(["--target", &target])
        // These would take precedence over the target's flags.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(flags_var, "-C target-feature=+crt-static -C strip=symbols");
    util::run(&mut cmd)?;
    Ok(util::target_dir()
        .join(target)
        .join("release")
        .join("cwatch"))
}

/// Fails unless `binary` is an ELF executable without an interpreter and
/// without dynamic libraries: in an image with nothing else, a dynamic one
/// would stop at exec with a bare "no such file or directory".
fn check_static(binary: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    match static_problem(&data) {
        None => Ok(()),
        Some(problem) => bail!(
            "{} is not a static executable ({problem}); the image has no shared libraries. \
             Static linking needs glibc's static libraries (Debian's libc6-dev)",
            binary.display()
        ),
    }
}

/// What makes `data` not a static ELF executable, if anything.
fn static_problem(data: &[u8]) -> Option<String> {
    use object::{
        Object as _, ObjectKind,
        read::elf::{ElfFile64, ProgramHeader as _},
    };
    let file = match ElfFile64::<object::Endianness>::parse(data) {
        Ok(file) => file,
        Err(err) => return Some(format!("not a 64-bit ELF file: {err}")),
    };
    if !matches!(file.kind(), ObjectKind::Executable | ObjectKind::Dynamic) {
        return Some(format!("an ELF {:?} file, not an executable", file.kind()));
    }
    let endian = file.endian();
    if file
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
    {
        return Some("it names a dynamic loader (PT_INTERP)".into());
    }
    match file.imports() {
        Ok(imports) if !imports.is_empty() => {
            Some(format!("it imports {} dynamic symbols", imports.len()))
        }
        Ok(_) => None,
        Err(err) => Some(format!("unreadable dynamic section: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_carries_the_version() {
        assert_eq!(
            reference(),
            format!("localhost/cwatch:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            digest_path(Path::new("/t/cwatch-1.oci.tar")),
            PathBuf::from("/t/cwatch-1.oci.tar.digest")
        );
    }

    #[test]
    fn a_dynamic_executable_is_refused_and_garbage_too() {
        // This test binary is linked dynamically (cargo test never links
        // statically here).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let problem = static_problem(&me).expect("a dynamic test binary passed");
        assert!(problem.contains("PT_INTERP"), "{problem}");
        assert!(static_problem(b"#!/bin/sh\n").is_some());
    }
}
