//! The tools the deploy tests and `cargo xtask package` use, and how this
//! machine gets them: Debian packages (Prometheus and promtool, strace,
//! Node.js), cargo-deb (crates.io), kubernetes-validate (PyPI, with the
//! Kubernetes JSON schemas bundled), and the prometheus-operator CRD schemas
//! (npm, into `target/deploy-tools`). Everything installs offline from the
//! registries; with everything present this only looks.
use std::{path::PathBuf, process::Command};

use anyhow::bail;

use crate::util;

/// Tool → Debian package.
const APT_TOOLS: &[(&str, &str)] = &[
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("strace", "strace"),
    ("setpriv", "util-linux"),
    ("systemd-analyze", "systemd"),
    ("dpkg-deb", "dpkg"),
    ("node", "nodejs"),
    ("npm", "npm"),
    ("python3", "python3"),
];
const CARGO_DEB: &str = "3.8.0";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const NPM_PACKAGES: &[&str] = &["@kubernetes-models/prometheus-operator@6.0.0", "js-yaml@4"];

/// Where the npm packages go (the deploy tests read it as CWATCH_NODE_TOOLS).
pub fn node_tools_dir() -> PathBuf {
    util::target_dir().join("deploy-tools")
}

pub fn ensure(check_only: bool) -> anyhow::Result<()> {
    let mut packages: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(tool, _)| which::which(tool).is_err())
        .map(|&(_, package)| package)
        .collect();
    packages.dedup();
    let mut missing: Vec<String> = packages.iter().map(|p| format!("apt: {p}")).collect();
    let cargo_deb = has_cargo_deb();
    if !cargo_deb {
        missing.push(format!("cargo-deb {CARGO_DEB}"));
    }
    let k8s = has_kubernetes_validate();
    if !k8s {
        missing.push(KUBERNETES_VALIDATE.into());
    }
    let npm = has_npm_packages();
    if !npm {
        missing.push(format!("npm: {}", NPM_PACKAGES.join(" ")));
    }
    if missing.is_empty() {
        return Ok(());
    }
    if check_only || !util::can_install() {
        bail!(
            "the deploy tests need {}; run `cargo xtask setup` as root",
            missing.join(", ")
        );
    }
    if !packages.is_empty() {
        util::apt_install(&packages)?;
    }
    if !cargo_deb {
        util::run(util::cargo().args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB,
        ]))?;
    }
    if !k8s {
        util::run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            KUBERNETES_VALIDATE,
        ]))?;
    }
    if !npm {
        let dir = node_tools_dir();
        std::fs::create_dir_all(&dir)?;
        util::run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .args(NPM_PACKAGES),
        )?;
    }
    if !(has_cargo_deb() && has_kubernetes_validate() && has_npm_packages()) {
        bail!("installed the deploy tools, but some are still missing");
    }
    Ok(())
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn has_cargo_deb() -> bool {
    quiet_ok(util::cargo().args(["deb", "--version"]))
}

fn has_kubernetes_validate() -> bool {
    quiet_ok(Command::new("python3").args(["-m", "kubernetes_validate", "--version"]))
}

fn has_npm_packages() -> bool {
    let modules = node_tools_dir().join("node_modules");
    modules
        .join("@kubernetes-models/prometheus-operator/package.json")
        .is_file()
        && modules.join("js-yaml/package.json").is_file()
}
