//! The container tools `cargo xtask image` and the image's deploy tests use,
//! all Debian packages: buildah (builds the image), skopeo (reads the
//! archive), podman with runc (runs it on this machine) and containerd
//! (imports the archive as a Kubernetes node does). With everything present
//! this only looks.
//!
//! runc, not Debian's default crun: crun 1.8 refuses to start any container
//! on a host whose cgroup v2 hierarchy holds a controller while v1 is
//! mounted too ("cgroups in hybrid mode not supported"), as on the project's
//! build hosts (hugetlb on v2, everything else on v1).
use anyhow::bail;

use crate::util;

/// Tool → Debian package.
const TOOLS: &[(&str, &str)] = &[
    ("buildah", "buildah"),
    ("skopeo", "skopeo"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("containerd", "containerd"),
    ("ctr", "containerd"),
];

pub fn ensure(check_only: bool) -> anyhow::Result<()> {
    let mut packages: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !installed(tool))
        .map(|&(_, package)| package)
        .collect();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    if check_only || !util::can_install() {
        bail!(
            "building and testing the container image needs {}; install with: apt-get install -y {}",
            packages.join(", "),
            packages.join(" ")
        );
    }
    util::apt_install(&packages)?;
    let still: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !installed(tool))
        .map(|&(tool, _)| tool)
        .collect();
    if !still.is_empty() {
        bail!("installed, but still missing: {}", still.join(", "));
    }
    Ok(())
}

/// On PATH, or in the sbin directories a non-login root shell may lack
/// (Debian installs runc in /usr/sbin).
fn installed(tool: &str) -> bool {
    which::which(tool).is_ok()
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| std::path::Path::new(dir).join(tool).is_file())
}
