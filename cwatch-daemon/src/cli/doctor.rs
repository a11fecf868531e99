/*!
`cwatch doctor`: checks that this host can run cwatch, and says in plain
words what is wrong and how to fix it. Nothing is loaded or changed.

Exit code 0 when cwatch can run (warnings allowed), 1 when a check failed.
Paths are taken under a root (`/` on a real host) so tests can build a fake
one.
*/
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::probe::preflight;

/// Kernel the probes need: tp_btf with `bpf_get_socket_cookie` and socket
/// storage in tracing programs, BPF ring buffer.
pub const MIN_KERNEL: (u32, u32) = (5, 12);
/// The oldest kernel the kernel tests run on (`cargo xtask test --kernels all`).
pub const OLDEST_TESTED: (u32, u32) = (6, 1);
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Capability bits (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub what: String,
    /// How to fix it (empty when ok).
    pub fix: String,
}

fn check(level: Level, what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        level,
        what: what.into(),
        fix: fix.into(),
    }
}

/// Where to look.
pub struct Host {
    pub root: PathBuf,
    pub kernel_release: String,
    /// Contents of /proc/self/status.
    pub status: String,
    pub pin_dir: PathBuf,
    /// The kernel's BTF file.
    pub btf: PathBuf,
    /// Whether `bpf()` lets this process create a map and load a program
    /// (probed once by [`Host::real`]).
    pub bpf: Result<(), preflight::Problem>,
}

impl Host {
    pub fn real(pin_dir: &Path, btf: &Path) -> Self {
        Self {
            btf: btf.to_path_buf(),
            bpf: preflight::bpf_allowed(),
            root: PathBuf::from("/"),
            kernel_release: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            status: std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
            pin_dir: pin_dir.to_path_buf(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// "6.18.0-foo" → (6, 18).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The CapEff bit set from /proc/<pid>/status.
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Every check, in order.
pub fn run_checks(host: &Host) -> Vec<Check> {
    let mut out = Vec::new();
    let (maj, min) = MIN_KERNEL;
    out.push(match kernel_version(&host.kernel_release) {
        Some(v) if v >= OLDEST_TESTED => check(Level::Ok, format!("kernel {} (needs {maj}.{min} or newer)", host.kernel_release), ""),
        Some(v) if v >= MIN_KERNEL => check(Level::Warn, format!("kernel {} is supported (needs {maj}.{min}) but older than any tested ({}.{})", host.kernel_release, OLDEST_TESTED.0, OLDEST_TESTED.1), "cwatch should work; its kernel tests run on 6.1 and newer"),
        Some(_) => check(Level::Fail, format!("kernel {} is older than {maj}.{min}", host.kernel_release), format!("run cwatch on Linux {maj}.{min} or newer (tp_btf socket cookies, socket storage in tracing programs)")),
        None => check(Level::Warn, format!("kernel release {:?} not understood", host.kernel_release), "make sure the kernel is 5.12 or newer"),
    });
    out.extend(btf_checks(&host.btf));
    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(|p| host.path(p))
        .find(|p| p.join("events").is_dir());
    out.push(match &tracefs {
        Some(p) => check(Level::Ok, format!("tracefs at {}", p.display()), ""),
        None => check(Level::Fail, "tracefs is not mounted", "mount -t tracefs tracefs /sys/kernel/tracing (cwatch run does this itself when it has CAP_SYS_ADMIN)"),
    });
    for (tp, required, why) in [
        ("sock/inet_sock_set_state", true, "every TCP state change"),
        ("tcp/tcp_destroy_sock", false, "sockets freed by the kernel"),
        (
            "syscalls/sys_enter_close",
            false,
            "close() per fd; needs CONFIG_FTRACE_SYSCALLS",
        ),
    ] {
        let present = tracefs
            .as_ref()
            .is_some_and(|t| t.join("events").join(tp).is_dir());
        out.push(match (present, required) {
            (true, _) => check(Level::Ok, format!("tracepoint {tp} (tracefs)"), ""),
            (false, true) => check(
                Level::Fail,
                format!("tracepoint {tp} is missing ({why})"),
                "cwatch needs it: use a kernel with CONFIG_TRACEPOINTS and CONFIG_INET",
            ),
            (false, false) => check(
                Level::Warn,
                format!("tracepoint {tp} is missing ({why})"),
                "cwatch runs without it, with less detail",
            ),
        });
    }
    // Before the pin directory: without capabilities it may be unreadable,
    // and the capabilities are then the problem to name.
    out.extend(capability_checks(cap_eff(&host.status)));
    out.push(match &host.bpf {
        Ok(()) => check(Level::Ok, "bpf() creates maps and loads programs", ""),
        Err(p) => check(Level::Fail, p.what.clone(), p.fix.clone()),
    });
    let bpffs = host.path("/sys/fs/bpf");
    // f_type's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let is_bpffs = rustix::fs::statfs(&bpffs).is_ok_and(|s| s.f_type as i64 == BPF_FS_MAGIC);
    out.push(if is_bpffs {
        check(Level::Ok, "bpffs at /sys/fs/bpf", "")
    } else {
        check(Level::Warn, "bpffs is not mounted at /sys/fs/bpf", "mount -t bpf bpf /sys/fs/bpf (cwatch run does this itself when it has CAP_SYS_ADMIN); without it state is not kept across restarts")
    });
    out.push(pin_dir_check(&host.pin_dir, is_bpffs));
    out
}

/// The BTF file, the fields cwatch reads in it and its tracepoints' types:
/// the same checks `cwatch run` makes before loading.
fn btf_checks(path: &Path) -> Vec<Check> {
    let fail = |p: preflight::Problem| check(Level::Fail, p.what, p.fix);
    let btf = match preflight::btf(path) {
        Ok(btf) => btf,
        Err(p) => return vec![fail(p)],
    };
    let mut out = vec![check(
        Level::Ok,
        format!("kernel BTF at {}", path.display()),
        "",
    )];
    out.push(match preflight::fields(&btf, path) {
        Ok(_) => check(
            Level::Ok,
            "kernel BTF has every struct field cwatch reads",
            "",
        ),
        Err(p) => fail(p),
    });
    out.push(match preflight::tracepoints(&btf, path) {
        Ok(()) => check(
            Level::Ok,
            "kernel BTF has the tracepoints cwatch attaches to",
            "",
        ),
        Err(p) => fail(p),
    });
    out
}

fn pin_dir_check(dir: &Path, bpffs: bool) -> Check {
    let shown = dir.display();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let n = entries.count();
            check(
                Level::Ok,
                format!("pin directory {shown} exists ({n} pinned objects)"),
                "",
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && bpffs => check(
            Level::Ok,
            format!("pin directory {shown} does not exist yet (cwatch run creates it)"),
            "",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => check(
            Level::Warn,
            format!("pin directory {shown} cannot be created: its parent is not bpffs"),
            "mount bpffs (above), or pass --pin-dir DIR on a bpffs mount",
        ),
        // cwatch runs without persistence then: a warning, not a failure.
        Err(e) => check(
            Level::Warn,
            format!("pin directory {shown}: {e} (cwatch would run without persistence)"),
            format!("make {shown} cwatch's own (mode 0700), or remove it (it is recreated)"),
        ),
    }
}

fn capability_checks(caps: Option<u64>) -> Vec<Check> {
    let Some(caps) = caps else {
        return vec![check(
            Level::Warn,
            "cannot read CapEff from /proc/self/status",
            "run as root or with CAP_BPF and CAP_PERFMON",
        )];
    };
    let mut out = Vec::new();
    let admin = has(caps, CAP_SYS_ADMIN);
    for (cap, name, why) in [
        (CAP_BPF, "CAP_BPF", "load programs and create maps"),
        (
            CAP_PERFMON,
            "CAP_PERFMON",
            "attach tracing programs and read kernel memory",
        ),
    ] {
        out.push(if has(caps, cap) || admin {
            check(Level::Ok, format!("{name} ({why})"), "")
        } else {
            check(Level::Fail, format!("missing {name}: needed to {why}"), format!("run as root, or grant it: systemd AmbientCapabilities={name}, or setcap cap_bpf,cap_perfmon+ep $(command -v cwatch)"))
        });
    }
    for (cap, name, why) in [
        (
            CAP_SYS_PTRACE,
            "CAP_SYS_PTRACE",
            "read other users' /proc/<pid>/fd to find socket owners",
        ),
        (
            CAP_DAC_READ_SEARCH,
            "CAP_DAC_READ_SEARCH",
            "read other users' /proc/<pid>/fd",
        ),
        (
            CAP_SYS_ADMIN,
            "CAP_SYS_ADMIN",
            "mount bpffs/tracefs when missing and enter network namespaces",
        ),
    ] {
        out.push(if has(caps, cap) {
            check(Level::Ok, format!("{name} ({why})"), "")
        } else {
            check(
                Level::Warn,
                format!("missing {name}: cannot {why}"),
                format!("grant {name} if you need it"),
            )
        });
    }
    out
}

/// The first problem that would stop `cwatch run` for certain, as one line
/// with its fix; `None` when loading may go ahead. A missing tracefs or
/// bpffs is not one (`run` mounts them), nor is a missing tracepoint while
/// tracefs is not mounted (it cannot be checked).
pub fn blocking_problem(host: &Host) -> Option<String> {
    let checks = run_checks(host);
    let tracefs_missing = checks
        .iter()
        .any(|c| c.level == Level::Fail && c.what.starts_with("tracefs"));
    let unknowable = |c: &Check| {
        c.what.starts_with("tracefs") || (tracefs_missing && c.what.starts_with("tracepoint"))
    };
    checks
        .into_iter()
        .filter(|c| c.level == Level::Fail)
        .find(|c| !unknowable(c))
        .map(|c| format!("{}; fix: {}", c.what, c.fix))
}

/// The report, one line per check, and whether cwatch can run.
pub fn report(checks: &[Check]) -> (String, bool) {
    let mut s = String::new();
    for c in checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        // Paths, the kernel's release and error texts are shown escaped.
        let _ = write!(s, "{tag} {}", crate::text::for_terminal(&c.what));
        if !c.fix.is_empty() {
            let _ = write!(s, "\n       fix: {}", crate::text::for_terminal(&c.fix));
        }
        s.push('\n');
    }
    let fails = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warns = checks.iter().filter(|c| c.level == Level::Warn).count();
    if fails == 0 {
        let _ = writeln!(s, "\ncwatch can run here ({warns} warnings).");
    } else {
        let _ = writeln!(
            s,
            "\ncwatch cannot run here: {fails} problems above ({warns} warnings)."
        );
    }
    (s, fails == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_caps_parse() {
        assert_eq!(kernel_version("6.18.0-cloud"), Some((6, 18)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
        let caps = cap_eff("Name:\tcwatch\nCapEff:\t000000c000200000\n").unwrap();
        assert!(has(caps, CAP_BPF) && has(caps, CAP_PERFMON) && has(caps, CAP_SYS_ADMIN));
        assert!(!has(caps, CAP_SYS_PTRACE));
    }

    #[test]
    fn a_bare_host_fails_with_fixes() {
        let root = std::env::temp_dir().join(format!("cwatch-doctor-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sys/kernel/tracing/events/tcp/tcp_destroy_sock"))
            .unwrap();
        let host = Host {
            root: root.clone(),
            kernel_release: "5.4.0".into(),
            status: "CapEff:\t0000000000000000\n".into(),
            pin_dir: root.join("sys/fs/bpf/cwatch"),
            btf: root.join("sys/kernel/btf/vmlinux"),
            bpf: Err(preflight::Problem {
                what: "the kernel refuses BPF: creating a map failed (EPERM)".into(),
                fix: "run as root".into(),
            }),
        };
        let checks = run_checks(&host);
        let (text, ok) = report(&checks);
        assert!(!ok);
        for needle in [
            "FAIL kernel 5.4.0 is older than 5.12",
            "FAIL no usable kernel BTF at ",
            "FAIL the kernel refuses BPF: creating a map failed",
            "FAIL tracepoint sock/inet_sock_set_state is missing",
            "ok   tracepoint tcp/tcp_destroy_sock",
            "WARN bpffs is not mounted",
            "fix: mount -t bpf bpf /sys/fs/bpf",
            "FAIL missing CAP_BPF",
            "cwatch cannot run here",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        let older = run_checks(&Host {
            kernel_release: "5.15.0-91-generic".into(),
            ..Host::real(&root, Path::new(crate::probe::offsets::VMLINUX_BTF))
        });
        assert_eq!(older[0].level, Level::Warn, "{older:?}");
        assert!(
            older[0].what.contains("older than any tested (6.1)"),
            "{older:?}"
        );
        let first = blocking_problem(&host).unwrap();
        assert!(
            first.starts_with("kernel 5.4.0 is older than 5.12; fix: "),
            "{first}"
        );
        // The running kernel's BTF stands in for a good one.
        if !Path::new(crate::probe::offsets::VMLINUX_BTF).exists()
            && std::env::var_os("CI").is_none()
        {
            eprintln!("skipping the rest: no kernel BTF here");
            return;
        }
        let fine = Host {
            kernel_release: "6.1.0".into(),
            status: "CapEff:\t000001ffffffffff\n".into(),
            btf: PathBuf::from(crate::probe::offsets::VMLINUX_BTF),
            bpf: Ok(()),
            ..host
        };
        let missing_tp = blocking_problem(&fine).unwrap();
        assert!(
            missing_tp.contains("sock/inet_sock_set_state"),
            "{missing_tp}"
        );
        std::fs::create_dir_all(root.join("sys/kernel/tracing/events/sock/inet_sock_set_state"))
            .unwrap();
        assert_eq!(blocking_problem(&fine), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
