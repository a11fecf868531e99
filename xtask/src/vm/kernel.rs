//! Which kernel a VM boots, and getting it: a version such as `6.1` is the
//! newest Debian `linux-image-6.1…-amd64` package apt knows, fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` under
//! `target/vm/kernels/` (never installed: nothing goes to /boot or
//! /lib/modules of this machine); `depmod -b` then indexes its modules so the
//! guest can load them. A `.deb` file or an unpacked package directory works
//! too. Picking the package is parsed apart from asking apt, and unit-tested.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util;

/// A kernel ready to boot: its image and its modules, unpacked.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` inside the guest, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The unpacked package (holds `boot/` and `lib/modules/`).
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
}

impl Kernel {
    /// `lib/modules` of the unpacked package (bound over the guest's).
    pub fn modules_root(&self) -> PathBuf {
        self.root.join("lib/modules")
    }

    /// `lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_root().join(&self.release)
    }
}

/// What the user named.
#[derive(Debug, PartialEq, Eq)]
pub enum Spec {
    /// `6.1`, `6.12`: the newest Debian package of that line.
    Version(String),
    /// `linux-image-6.1.0-57-amd64`: that package.
    Package(String),
    /// A `.deb` or an unpacked package directory.
    Path(PathBuf),
}

impl Spec {
    pub fn parse(text: &str) -> anyhow::Result<Spec> {
        if text.starts_with("linux-image-") && !text.contains('/') {
            return Ok(Spec::Package(text.to_string()));
        }
        let mut parts = text.split('.');
        let numeric = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none() {
            return Ok(Spec::Version(text.to_string()));
        }
        if text.contains('/') || text.ends_with(".deb") || Path::new(text).exists() {
            return Ok(Spec::Path(PathBuf::from(text)));
        }
        bail!(
            "kernel {text:?} not understood: give `host`, a version such as 6.1 or 6.12, \
             a Debian package name (linux-image-…-amd64), a .deb, or an unpacked package directory"
        )
    }
}

/// Where fetched kernels are kept.
pub fn cache_dir() -> PathBuf {
    util::target_dir().join("vm").join("kernels")
}

/// Resolves, fetches (once) and unpacks the kernel `spec` names.
pub fn prepare(spec: &Spec) -> anyhow::Result<Kernel> {
    match spec {
        Spec::Version(version) => {
            let package = newest_package(version)?;
            eprintln!("xtask: Linux {version}: newest Debian package is {package}");
            fetch_package(&package)
        }
        Spec::Package(package) => fetch_package(package),
        Spec::Path(path) if path.is_dir() => unpacked(path),
        Spec::Path(path) => {
            let stem = path
                .file_stem()
                .with_context(|| format!("{} has no file name", path.display()))?;
            unpack(path, &cache_dir().join(stem))
        }
    }
}

/// The newest `linux-image-<version>…-amd64` apt knows (running `apt-get
/// update` once when it knows none).
fn newest_package(version: &str) -> anyhow::Result<String> {
    let ask = || -> anyhow::Result<Option<String>> {
        let out = Command::new("apt-cache")
            .args(["pkgnames", &format!("linux-image-{version}")])
            .output()
            .context("cannot run apt-cache (Debian's apt is needed to fetch kernels)")?;
        Ok(pick_package(version, &String::from_utf8_lossy(&out.stdout)))
    };
    if let Some(found) = ask()? {
        return Ok(found);
    }
    if util::can_install() {
        util::apt_update()?;
        if let Some(found) = ask()? {
            return Ok(found);
        }
    }
    bail!(
        "apt knows no linux-image-{version}…-amd64 package (tried `apt-cache pkgnames`; \
         as root `apt-get update` first): give a package name, a .deb or a directory"
    )
}

/// Of `names` (one a line), the newest generic amd64 image of `version`:
/// `linux-image-6.1.0-57-amd64`, `linux-image-6.12.117+deb12-amd64`; not the
/// meta packages, not `-cloud`/`-rt` flavours, not `-dbg`/`-unsigned`.
pub fn pick_package(version: &str, names: &str) -> Option<String> {
    let prefix = format!("linux-image-{version}");
    names
        .lines()
        .map(str::trim)
        .filter_map(|name| {
            let rest = name.strip_prefix(&prefix)?;
            // 6.1 must not take 6.12's packages.
            let rest = rest.strip_prefix('.').or_else(|| rest.strip_prefix('-'))?;
            let kver = rest.strip_suffix("-amd64")?;
            let flavoured = kver
                .split('-')
                .any(|seg| seg.bytes().all(|b| b.is_ascii_alphabetic()));
            if kver.is_empty() || flavoured || !kver.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            Some((version_key(kver), name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
}

/// The numbers in a version string, in order ("0-57" → [0, 57]).
fn version_key(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn fetch_package(package: &str) -> anyhow::Result<Kernel> {
    let dir = cache_dir().join(package);
    if dir.join(READY).is_file() {
        return unpacked(&dir);
    }
    let downloads = cache_dir().join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    eprintln!("xtask: fetching {package} with apt-get download (no install)");
    util::run(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&downloads),
    )?;
    let deb = std::fs::read_dir(&downloads)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                downloads.display()
            )
        })?;
    let kernel = unpack(&deb, &dir)?;
    // The unpacked tree is what is kept.
    let _ = std::fs::remove_file(&deb);
    Ok(kernel)
}

/// Marks a completely unpacked and indexed package directory.
const READY: &str = ".cwatch-ready";

fn unpack(deb: &Path, dir: &Path) -> anyhow::Result<Kernel> {
    if dir.join(READY).is_file() {
        return unpacked(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    let kernel = unpacked(dir)?;
    std::fs::write(dir.join(READY), b"")?;
    Ok(kernel)
}

/// An unpacked package: one release under `lib/modules`, its
/// `boot/vmlinuz-<release>`, modules indexed (depmod when not yet).
fn unpacked(dir: &Path) -> anyhow::Result<Kernel> {
    let modules = dir.join("lib/modules");
    let releases: Vec<String> = std::fs::read_dir(&modules)
        .with_context(|| format!("{} has no lib/modules: not a kernel package", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let [release] = releases.as_slice() else {
        bail!(
            "{} holds {} kernel releases ({releases:?}); expected one",
            modules.display(),
            releases.len()
        );
    };
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!(
            "{} is missing: not a kernel image package",
            vmlinuz.display()
        );
    }
    if !modules.join(release).join("modules.dep").is_file() {
        util::run(Command::new("depmod").arg("-b").arg(dir).arg(release))?;
    }
    let root =
        std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    Ok(Kernel {
        release: release.clone(),
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKGNAMES: &str = "linux-image-6.1.0-47-amd64
linux-image-6.1.0-57-cloud-amd64
linux-image-6.1.0-57-amd64
linux-image-6.1.0-9-amd64
linux-image-6.1.0-57-rt-amd64
linux-image-6.1.0-57-amd64-dbg
linux-image-6.1.0-57-amd64-unsigned
linux-image-6.12-amd64
linux-image-6.12.117+deb12-amd64
linux-image-6.12.9+deb12-amd64
linux-image-6.12.117+deb12-cloud-amd64
";

    #[test]
    fn picks_the_newest_generic_image_of_a_line() {
        assert_eq!(
            pick_package("6.1", PKGNAMES).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(
            pick_package("6.12", PKGNAMES).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        assert_eq!(pick_package("6.6", PKGNAMES), None);
        assert_eq!(pick_package("6.1", ""), None);
    }

    #[test]
    fn specs() {
        assert_eq!(Spec::parse("6.1").unwrap(), Spec::Version("6.1".into()));
        assert_eq!(Spec::parse("6.12").unwrap(), Spec::Version("6.12".into()));
        assert_eq!(
            Spec::parse("linux-image-6.1.0-57-amd64").unwrap(),
            Spec::Package("linux-image-6.1.0-57-amd64".into())
        );
        assert_eq!(
            Spec::parse("./k.deb").unwrap(),
            Spec::Path("./k.deb".into())
        );
        assert_eq!(Spec::parse("/tmp/k").unwrap(), Spec::Path("/tmp/k".into()));
        assert!(Spec::parse("six").is_err());
        assert!(Spec::parse("6.").is_err());
    }
}
