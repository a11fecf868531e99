/*!
Finds a toolchain that can build cwatch's eBPF object for `bpfel-unknown-none`,
or says exactly what is missing and how to get it.

Two toolchains work (see DEVELOPERS.md):

- **rustup nightly with rust-src**: the usual aya path, `-Z build-std=core`.
- **Debian's rustc-web** (`/usr/bin/rustc`, `/usr/bin/cargo`) with
  `libstd-rust-web-dev-bpf`, which ships a prebuilt `core` for the BPF
  targets. It is a stable compiler, so the unstable features of aya-ebpf
  and cwatch-ebpf (inline BPF assembly) are allowed for those two crates
  with `RUSTC_BOOTSTRAP=aya_ebpf,cwatch_ebpf`.

Both need `bpf-linker` on PATH. Used by `cwatch-daemon/build.rs` (to build)
and by `xtask` (to check and install).
*/

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Forces a toolchain: `nightly` (or any rustup toolchain name with rust-src)
/// or a path prefix such as `/usr` holding `bin/cargo` and a BPF `core`.
pub const TOOLCHAIN_ENV: &str = "CWATCH_EBPF_TOOLCHAIN";

/// The Debian package with the prebuilt `core` for the BPF targets.
pub const BPF_CORE_PACKAGE: &str = "libstd-rust-web-dev-bpf";
/// The Debian packages behind the system path.
pub const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", BPF_CORE_PACKAGE, "llvm-22-dev"];
/// Where llvm-22-dev puts LLVM; bpf-linker is built against it.
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// A toolchain that can build the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// A rustup toolchain (by name) that has rust-src: build with
    /// `-Z build-std=core`.
    Rustup(String),
    /// A prefix (e.g. `/usr`) with `bin/cargo` and a prebuilt `core` for
    /// `bpfel-unknown-none`: build on stable with `RUSTC_BOOTSTRAP=aya_ebpf,cwatch_ebpf`.
    System(PathBuf),
}

impl Toolchain {
    /// What `rustup run` takes: a toolchain name or a path.
    pub fn rustup_arg(&self) -> String {
        match self {
            Toolchain::Rustup(name) => name.clone(),
            Toolchain::System(prefix) => prefix.display().to_string(),
        }
    }

    /// The `RUSTC_BOOTSTRAP` value the build needs, if any.
    pub fn rustc_bootstrap(&self) -> Option<&'static str> {
        match self {
            Toolchain::Rustup(_) => None,
            Toolchain::System(_) => Some("aya_ebpf,cwatch_ebpf"),
        }
    }
}

impl std::fmt::Display for Toolchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Toolchain::Rustup(name) => write!(f, "rustup `{name}` with rust-src (-Z build-std)"),
            Toolchain::System(prefix) => {
                write!(f, "{}/bin/cargo with a prebuilt BPF core", prefix.display())
            }
        }
    }
}

/// What is on this machine.
#[derive(Clone, Debug)]
pub struct Detection {
    pub toolchain: Option<Toolchain>,
    pub bpf_linker: Option<PathBuf>,
    /// Set when `CWATCH_EBPF_TOOLCHAIN` names something that does not work.
    pub forced_error: Option<String>,
}

impl Detection {
    pub fn is_complete(&self) -> bool {
        self.toolchain.is_some() && self.bpf_linker.is_some() && self.forced_error.is_none()
    }

    /// One paragraph naming what is missing and the commands that fix it.
    pub fn missing_help(&self) -> String {
        let mut missing = Vec::new();
        if let Some(err) = &self.forced_error {
            missing.push(err.clone());
        } else if self.toolchain.is_none() {
            missing.push(format!(
                "no toolchain can build for bpfel-unknown-none (neither rustup nightly with \
                 rust-src nor Debian's /usr/bin/cargo with {BPF_CORE_PACKAGE})"
            ));
        }
        if self.bpf_linker.is_none() {
            missing.push("bpf-linker is not on PATH".to_string());
        }
        format!(
            "cannot build cwatch's eBPF object: {}.\n\
             Fix: `cargo xtask setup` (as root: installs what is missing), or by hand:\n  \
             apt-get install -y {} bpftool\n  \
             PATH={LLVM_PREFIX}/bin:$PATH LLVM_SYS_221_PREFIX={LLVM_PREFIX} LLVM_PREFIX={LLVM_PREFIX} \
             cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22\n\
             (or, with rustup nightly: rustup component add rust-src --toolchain nightly && \
             cargo install bpf-linker)",
            missing.join("; "),
            DEBIAN_PACKAGES.join(" "),
        )
    }
}

/// Looks for a toolchain and bpf-linker. Cheap: a few file checks and at most
/// one `rustup run … rustc --print sysroot`.
pub fn detect() -> Detection {
    let bpf_linker = which::which("bpf-linker").ok();
    if let Some(forced) = env::var_os(TOOLCHAIN_ENV).filter(|v| !v.is_empty()) {
        let forced = forced.to_string_lossy().into_owned();
        let (toolchain, forced_error) = check_forced(&forced);
        return Detection {
            toolchain,
            bpf_linker,
            forced_error,
        };
    }
    let toolchain = rustup_with_rust_src("nightly")
        .map(|_| Toolchain::Rustup("nightly".to_string()))
        .or_else(|| system_prefix(Path::new("/usr")).map(Toolchain::System));
    Detection {
        toolchain,
        bpf_linker,
        forced_error: None,
    }
}

fn check_forced(forced: &str) -> (Option<Toolchain>, Option<String>) {
    if forced.starts_with('/') {
        match system_prefix(Path::new(forced)) {
            Some(prefix) => (Some(Toolchain::System(prefix)), None),
            None => (
                None,
                Some(format!(
                    "{TOOLCHAIN_ENV}={forced}: no {forced}/bin/cargo with a core library for \
                     bpfel-unknown-none under {forced}/lib/rustlib"
                )),
            ),
        }
    } else {
        match rustup_with_rust_src(forced) {
            Some(_) => (Some(Toolchain::Rustup(forced.to_string())), None),
            None => (
                None,
                Some(format!(
                    "{TOOLCHAIN_ENV}={forced}: rustup toolchain `{forced}` is missing or has no \
                     rust-src (rustup component add rust-src --toolchain {forced})"
                )),
            ),
        }
    }
}

/// The sysroot of a rustup toolchain, if it exists and carries rust-src.
fn rustup_with_rust_src(name: &str) -> Option<PathBuf> {
    let rustup = which::which("rustup").ok()?;
    let out = Command::new(rustup)
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
        .then_some(sysroot)
}

/// `prefix` if it has `bin/cargo`, `bin/rustc` and a prebuilt BPF `core`.
fn system_prefix(prefix: &Path) -> Option<PathBuf> {
    let has_bins = prefix.join("bin/cargo").is_file() && prefix.join("bin/rustc").is_file();
    let libdir = prefix.join("lib/rustlib/bpfel-unknown-none/lib");
    let has_core = std::fs::read_dir(&libdir).ok()?.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libcore-") && name.ends_with(".rlib")
    });
    (has_bins && has_core).then(|| prefix.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_missing_piece() {
        let none = Detection {
            toolchain: None,
            bpf_linker: None,
            forced_error: None,
        };
        let help = none.missing_help();
        assert!(help.contains("no toolchain can build"), "{help}");
        assert!(help.contains("bpf-linker is not on PATH"), "{help}");
        assert!(help.contains("cargo xtask setup"), "{help}");
        assert!(!none.is_complete());

        let only_linker = Detection {
            toolchain: Some(Toolchain::System("/usr".into())),
            bpf_linker: None,
            forced_error: None,
        };
        let help = only_linker.missing_help();
        assert!(!help.contains("no toolchain"), "{help}");
        assert!(help.contains("bpf-linker"), "{help}");
    }

    #[test]
    fn system_prefix_needs_a_bpf_core() {
        let dir = std::env::temp_dir().join(format!("cwatch-build-test-{}", std::process::id()));
        let lib = dir.join("lib/rustlib/bpfel-unknown-none/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/cargo"), "").unwrap();
        std::fs::write(dir.join("bin/rustc"), "").unwrap();
        assert_eq!(system_prefix(&dir), None, "no core yet");
        std::fs::write(lib.join("libcore-0123.rlib"), "").unwrap();
        assert_eq!(system_prefix(&dir), Some(dir.clone()));
        let (tc, err) = check_forced(dir.to_str().unwrap());
        assert_eq!(tc, Some(Toolchain::System(dir.clone())));
        assert!(err.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
        let (tc, err) = check_forced("/nonexistent/prefix");
        assert!(tc.is_none());
        assert!(err.unwrap().contains("/nonexistent/prefix"));
    }

    #[test]
    fn bootstrap_is_scoped_to_the_ebpf_crates_on_the_system_path_only() {
        assert_eq!(
            Toolchain::System("/usr".into()).rustc_bootstrap(),
            Some("aya_ebpf,cwatch_ebpf")
        );
        assert_eq!(Toolchain::Rustup("nightly".into()).rustc_bootstrap(), None);
        assert_eq!(Toolchain::System("/usr".into()).rustup_arg(), "/usr");
    }
}
