//! The kernel tests on other kernels: `cargo xtask test --kernel 6.1`. The
//! kernel package is fetched and unpacked (`kernel.rs`), an initramfs built
//! (`initramfs.rs`), and qemu boots it (`qemu.rs`) on a view of this
//! machine's own files, so the guest runs the very `cwatch`, `cwatch-load`
//! and kernel test binary built here, with the same environment
//! `cargo xtask test` gives them on the host (`guest.sh` sets the guest up).
//! Results come back as the test binary's own output and exit code.
mod initramfs;
mod kernel;
mod qemu;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

pub use qemu::Outcome;

use crate::util;

/// The second stage of the guest's init, run from the host's files.
const GUEST: &str = include_str!("guest.sh");

/// Longest a kernel's tests may run in a VM.
const SUITE_LIMIT: Duration = Duration::from_secs(45 * 60);

/// What the guest runs: the kernel test binary, its environment and
/// arguments.
pub struct Suite {
    pub test_exe: PathBuf,
    pub env: Vec<(String, OsString)>,
    pub args: Vec<String>,
}

/// qemu, static busybox and the package tools, installed when missing
/// (as root), else one line naming them.
pub fn ensure_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = [
        (qemu::QEMU, "qemu-system-x86"),
        ("dpkg-deb", "dpkg"),
        ("depmod", "kmod"),
        ("apt-get", "apt"),
    ]
    .iter()
    .filter(|(tool, _)| which::which(tool).is_err())
    .map(|&(_, package)| package)
    .collect();
    if !static_busybox() {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !util::can_install() {
        bail!(
            "no VM can start here: it needs {}; install with: apt-get install -y {} (as root)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    util::apt_install(&missing)?;
    if which::which(qemu::QEMU).is_err() || !static_busybox() {
        bail!(
            "no VM can start here: installed {}, still missing",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Debian's static busybox is at /bin/busybox (the dynamic `busybox`
/// package would be there too, but cannot run in the initramfs).
fn static_busybox() -> bool {
    Path::new(initramfs::BUSYBOX).is_file()
        && Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", "busybox-static"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Boots `spec`'s kernel and runs `suite` in it.
pub fn run(spec: &str, suite: &Suite) -> anyhow::Result<(String, Outcome)> {
    let kernel = kernel::prepare(&kernel::Spec::parse(spec)?)?;
    let vm_dir = absolute(&util::target_dir().join("vm"))?;
    let run_dir = vm_dir.join("run").join(&kernel.release);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let initramfs = run_dir.join("initramfs.cpio");
    initramfs::build(&kernel, &initramfs)?;
    let guest = vm_dir.join("guest.sh");
    std::fs::write(&guest, GUEST).with_context(|| format!("writing {}", guest.display()))?;
    let env = run_dir.join("env.sh");
    std::fs::write(&env, env_script(&kernel, suite)?)
        .with_context(|| format!("writing {}", env.display()))?;
    for path in [&guest, &env] {
        if path.to_string_lossy().contains(char::is_whitespace) {
            bail!(
                "{} has white space: the kernel command line cannot carry it",
                path.display()
            );
        }
    }
    eprintln!(
        "xtask: booting Linux {} in a VM ({} CPUs, {})",
        kernel.release,
        qemu::CPUS,
        qemu::MEMORY
    );
    let outcome = qemu::run(&qemu::Boot {
        vmlinuz: &kernel.vmlinuz,
        initramfs: &initramfs,
        cmdline: format!(
            "cwatch_stage2={} cwatch_env={}",
            guest.display(),
            env.display()
        ),
        log: run_dir.join("console.log"),
        suite_limit: SUITE_LIMIT,
    })?;
    Ok((kernel.release, outcome))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))
}

/// The shell file the guest sources: the tests' environment, the guest's
/// settings copied from this host, and the test binary's arguments.
fn env_script(kernel: &kernel::Kernel, suite: &Suite) -> anyhow::Result<String> {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20);
    let ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("reading net.ipv4.ip_local_port_range")?;
    let cwd = util::workspace_root().join("cwatch-testkit");
    let mut vars: Vec<(String, String)> = vec![
        (
            "CWATCH_VM_TEST".into(),
            suite.test_exe.display().to_string(),
        ),
        (
            "CWATCH_VM_MODULES".into(),
            kernel.modules_root().display().to_string(),
        ),
        ("CWATCH_VM_CWD".into(), cwd.display().to_string()),
        ("CWATCH_VM_NOFILE".into(), nofile.to_string()),
        (
            "CWATCH_VM_PORT_RANGE".into(),
            ports.split_whitespace().collect::<Vec<_>>().join(" "),
        ),
        // As cargo sets it for a test binary it runs.
        ("CARGO_MANIFEST_DIR".into(), cwd.display().to_string()),
        ("HOME".into(), "/root".into()),
    ];
    for key in ["PATH", "RUST_BACKTRACE", "RUST_LOG"] {
        if let Ok(value) = std::env::var(key) {
            vars.push((key.into(), value));
        }
    }
    vars.extend(
        suite
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string_lossy().into_owned())),
    );
    let mut out = String::from("# Written by cargo xtask test for the VM's guest.sh.\n");
    for (key, value) in vars {
        out += &format!("export {key}={}\n", quote(&value));
    }
    out += "set --";
    for arg in &suite.args {
        out += " ";
        out += &quote(arg);
    }
    out += "\n";
    Ok(out)
}

/// `value` as one single-quoted shell word.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The kernel test binary `cargo test --no-run --message-format=json` built
/// (the last test executable it names).
pub fn test_executable(json_lines: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["profile"]["test"] == true)
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_executable_in_cargo_json() {
        let lines = r#"{"reason":"compiler-artifact","profile":{"test":false},"executable":null,"target":{"name":"cwatch-testkit"}}
{"reason":"compiler-artifact","profile":{"test":false},"executable":"/w/target/debug/cwatch-load"}
{"reason":"compiler-artifact","profile":{"test":true},"executable":"/w/target/debug/deps/kernel-42cc9f8ac29838d5"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executable(lines),
            Some(PathBuf::from(
                "/w/target/debug/deps/kernel-42cc9f8ac29838d5"
            ))
        );
        assert_eq!(
            test_executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
