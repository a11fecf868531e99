//! `cargo xtask test`: the whole suite. Unit tests first (no privileges),
//! then the kernel tests, which load the real probes and need root, then the
//! deploy tests (sd_notify, capabilities, systemd unit, alert rules, a real
//! Prometheus, the dashboard, the .deb, the Kubernetes manifests, the
//! container image built by `cargo xtask image` and run). Those are
//! never skipped silently: without root this fails and says how to run them;
//! under CI=true it fails the build.
//!
//! `--kernel VERSION|PATH` and `--kernels LIST` run the kernel tests on other
//! kernels, each booted in a VM (`vm/`), and end with one line per kernel.
//!
//! Every daemon the kernel and deploy tests start runs with exactly the
//! capabilities of deploy/systemd/cwatch.service (through setpriv), which
//! proves the unit's set is enough; `--daemon-caps all` runs them as plain
//! root instead.
use anyhow::{Context as _, bail};

use crate::{deploy_tools, image, package, setup, util, vm};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DaemonCaps {
    /// Exactly the systemd unit's CapabilityBoundingSet=.
    Unit,
    /// Every capability root has.
    All,
}

#[derive(clap::Args)]
pub struct Options {
    /// Only the unit tests (no root needed).
    #[arg(long, conflicts_with_all = ["kernel", "kernels", "deploy"])]
    pub unit: bool,
    /// Only the kernel tests: on this machine's kernel (`--kernel` alone, or
    /// `host`), or in a VM booting another: a version (`6.1`, `6.12`: the
    /// newest Debian package), a package name, a .deb or an unpacked package.
    #[arg(long, value_name = "VERSION|PATH", num_args = 0..=1, default_missing_value = "host",
          conflicts_with_all = ["deploy", "kernels"])]
    pub kernel: Option<String>,
    /// The kernel tests on each of these kernels in turn (comma-separated, as
    /// for --kernel); `all` is host,6.1,6.12.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        conflicts_with = "deploy"
    )]
    pub kernels: Vec<String>,
    /// Only the deploy tests.
    #[arg(long)]
    pub deploy: bool,
    /// The capabilities the test daemons run with.
    #[arg(long, value_enum, default_value = "unit")]
    pub daemon_caps: DaemonCaps,
    /// Passed to the test binaries, e.g. a test name to filter on.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The kernels `--kernels all` means.
pub const ALL_KERNELS: &[&str] = &["host", "6.1", "6.12"];

impl Options {
    /// The kernels to run the kernel tests on, when only those run.
    fn kernel_targets(&self) -> Option<Vec<String>> {
        if let Some(kernel) = &self.kernel {
            return Some(vec![kernel.clone()]);
        }
        if self.kernels.is_empty() {
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        for k in &self.kernels {
            let expanded: Vec<String> = match k.as_str() {
                "all" => ALL_KERNELS.iter().map(|s| s.to_string()).collect(),
                other => vec![other.to_string()],
            };
            for k in expanded {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Some(out)
    }
}

/// The unit's capability bounding set, comma-separated (`CAP_BPF,…`).
pub fn unit_capabilities() -> anyhow::Result<String> {
    let path = util::workspace_root().join("deploy/systemd/cwatch.service");
    let unit =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .with_context(|| format!("{} has no CapabilityBoundingSet=", path.display()))?;
    Ok(caps.split_whitespace().collect::<Vec<_>>().join(","))
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::ensure_build_toolchain(false)?;
    let kernels = opts.kernel_targets();
    if kernels.is_none() && !opts.deploy {
        // The cwatch-stacks tests build C, C++, Rust and Go programs; as
        // root, install what they need first (otherwise they say what is
        // missing, and fail under CI=true).
        if util::can_install() {
            setup::ensure_stacks_tools(false)?;
        }
        util::run(util::cargo().args(["test", "--quiet"]))?;
    }
    if opts.unit {
        return Ok(());
    }
    let on_host = kernels
        .as_ref()
        .is_none_or(|k| k.iter().any(|k| k == "host"));
    let in_vms = kernels
        .as_ref()
        .is_some_and(|k| k.iter().any(|k| k != "host"));
    let root = util::is_root();
    if !root && on_host {
        let why = "the kernel and deploy tests load eBPF programs and install \
                   packages, and need root";
        if util::in_ci() {
            bail!("CI=true: {why}; refusing to skip them");
        }
        if which::which("sudo").is_err() {
            bail!("{why} and there is no sudo: run as root, or `cargo xtask test --unit`");
        }
        eprintln!("xtask: not root: the kernel and deploy tests run through `sudo -E`");
    }
    setup::ensure_test_tools(false)?;
    if in_vms {
        vm::ensure_tools()?;
    }
    let (deb, image) = if kernels.is_some() {
        (None, None)
    } else {
        deploy_tools::ensure(false)?;
        (Some(package::run()?), Some(image::run()?))
    };
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
        "--bin",
        "cwatch-deny",
    ]))?;
    let cwatch = util::target_dir().join("debug").join("cwatch");
    let caps = match opts.daemon_caps {
        DaemonCaps::Unit => unit_capabilities()?,
        DaemonCaps::All => String::new(),
    };
    if !caps.is_empty() {
        eprintln!("xtask: test daemons run with exactly the unit's capabilities: {caps}");
    }
    let mut env: Vec<(String, std::ffi::OsString)> = vec![
        ("CWATCH_BIN".into(), cwatch.into()),
        ("CWATCH_DAEMON_CAPS".into(), caps.into()),
        (
            "CWATCH_NODE_TOOLS".into(),
            deploy_tools::node_tools_dir().into(),
        ),
    ];
    if let Some(image) = &image {
        env.push(("CWATCH_IMAGE_ARCHIVE".into(), image.archive.clone().into()));
        env.push(("CWATCH_IMAGE".into(), image.reference.clone().into()));
        env.push(("CWATCH_IMAGE_DIGEST".into(), image.digest.clone().into()));
    }
    let Some(kernels) = kernels else {
        let binaries: &[&str] = if opts.deploy {
            &["deploy"]
        } else {
            &["kernel", "deploy"]
        };
        for binary in binaries {
            host_tests(binary, root, &env, deb.as_deref(), &opts.args)?;
        }
        return Ok(());
    };
    kernel_suites(&kernels, root, env, &opts.args)
}

/// Runs test binary `binary` of cwatch-testkit on this machine, through cargo.
fn host_tests(
    binary: &str,
    root: bool,
    env: &[(String, std::ffi::OsString)],
    deb: Option<&std::path::Path>,
    args: &[String],
) -> anyhow::Result<()> {
    // The kernel tests make loopback connections by the hundred thousand.
    let _untracked = match binary {
        "kernel" => crate::conntrack::untrack_loopback()?,
        _ => None,
    };
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--package",
        "cwatch-testkit",
        "--features",
        "kernel-tests",
        "--test",
        binary,
    ]);
    if !root {
        // Only the test binary runs as root, not the build.
        cmd.args(["--config", "target.'cfg(all())'.runner = ['sudo', '-E']"]);
    }
    // One at a time: every daemon sees every socket on the host, and the
    // counters the tests compare are host-wide.
    cmd.args(["--", "--test-threads=1"]).args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    if let Some(deb) = deb {
        cmd.env("CWATCH_DEB", deb);
    }
    util::run(&mut cmd)
}

/// The kernel tests on each of `kernels` (`host` here, the others in VMs),
/// every one run even when an earlier one failed; then a line per kernel.
fn kernel_suites(
    kernels: &[String],
    root: bool,
    env: Vec<(String, std::ffi::OsString)>,
    args: &[String],
) -> anyhow::Result<()> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let suite = if kernels.iter().any(|k| k != "host") {
        Some(vm::Suite {
            test_exe: kernel_test_executable()?,
            env: env.clone(),
            // The guest's console is a terminal: colour only when ours is.
            args: [
                "--test-threads=1".to_string(),
                format!("--color={}", if terminal { "always" } else { "never" }),
            ]
            .into_iter()
            .chain(args.iter().cloned())
            .collect(),
        })
    } else {
        None
    };
    let mut report: Vec<String> = Vec::new();
    let mut failed = 0;
    for kernel in kernels {
        let started = std::time::Instant::now();
        let line = match (kernel.as_str(), &suite) {
            ("host", _) | (_, None) => {
                let release = rustix::system::uname()
                    .release()
                    .to_string_lossy()
                    .into_owned();
                match host_tests("kernel", root, &env, None, args) {
                    Ok(()) => format!("{release} (host): passed in {:.0?}", started.elapsed()),
                    Err(err) => {
                        failed += 1;
                        format!(
                            "{release} (host): FAILED after {:.0?}: {err:#}",
                            started.elapsed()
                        )
                    }
                }
            }
            (spec, Some(suite)) => match vm::run(spec, suite) {
                Ok((release, o)) if o.exit == 0 => format!(
                    "{release} (VM, {}): passed; boot {:.0?}, tests {:.0?}",
                    o.accel.name(),
                    o.boot,
                    o.suite
                ),
                Ok((release, o)) => {
                    failed += 1;
                    format!(
                        "{release} (VM, {}): FAILED (exit {}); boot {:.0?}, tests {:.0?}",
                        o.accel.name(),
                        o.exit,
                        o.boot,
                        o.suite
                    )
                }
                Err(err) => {
                    failed += 1;
                    format!("{spec}: no result: {err:#}")
                }
            },
        };
        eprintln!("xtask: kernel {line}");
        report.push(line);
    }
    if report.len() > 1 {
        eprintln!("xtask: kernel tests on {} kernels:", report.len());
        for line in &report {
            eprintln!("xtask:   {line}");
        }
    }
    if failed > 0 {
        bail!(
            "the kernel tests failed on {failed} of {} kernels",
            kernels.len()
        );
    }
    Ok(())
}

/// Builds the kernel test binary and returns its path (the VM runs it
/// directly, not through cargo).
fn kernel_test_executable() -> anyhow::Result<std::path::PathBuf> {
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--package",
        "cwatch-testkit",
        "--features",
        "kernel-tests",
        "--test",
        "kernel",
    ])
    .stderr(std::process::Stdio::inherit());
    eprintln!("xtask: $ {cmd:?}");
    let out = cmd.output().context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the kernel tests failed ({})", out.status);
    }
    vm::test_executable(&String::from_utf8_lossy(&out.stdout))
        .context("cargo test --no-run named no test executable")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        opts: super::Options,
    }

    fn targets(args: &[&str]) -> Option<Vec<String>> {
        let cli = Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).unwrap();
        cli.opts.kernel_targets()
    }

    #[test]
    fn kernel_flags() {
        assert_eq!(targets(&[]), None);
        assert_eq!(targets(&["--kernel"]), Some(vec!["host".to_string()]));
        assert_eq!(
            targets(&["--kernel", "--", "incident"]),
            Some(vec!["host".to_string()])
        );
        assert_eq!(
            targets(&["--kernel", "6.1", "--", "incident"]),
            Some(vec!["6.1".to_string()])
        );
        assert_eq!(
            targets(&["--kernels", "all"]),
            Some(vec!["host".into(), "6.1".into(), "6.12".into()])
        );
        assert_eq!(
            targets(&["--kernels", "6.12,6.1,6.12"]),
            Some(vec!["6.12".into(), "6.1".into()])
        );
        let cli = Cli::try_parse_from(["test", "--kernel", "--", "incident"]).unwrap();
        assert_eq!(cli.opts.args, ["incident"]);
        assert!(Cli::try_parse_from(["test", "--kernel", "6.1", "--kernels", "all"]).is_err());
        assert!(Cli::try_parse_from(["test", "--unit", "--kernels", "all"]).is_err());
    }

    #[test]
    fn the_unit_names_its_capabilities() {
        let caps = super::unit_capabilities().unwrap();
        assert!(caps.split(',').all(|c| c.starts_with("CAP_")), "{caps}");
        assert!(caps.contains("CAP_BPF"), "{caps}");
    }
}
