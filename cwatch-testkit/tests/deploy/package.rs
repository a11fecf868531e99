//! The .deb from `cargo xtask package` (path in CWATCH_DEB), installed into
//! this machine with dpkg: its files are in place, `cwatch --version`
//! answers, the installed unit verifies clean, the service is enabled but not
//! started, its system user exists; `dpkg --remove` then `--purge` leave
//! nothing behind (but the system user, as Debian does), and purge
//! removes the pins under /sys/fs/bpf/cwatch. The purge runs in a private
//! mount namespace on a fresh bpffs (a new instance: only the kernel's
//! `*.debug` iterators in it), so no other daemon's pins are touched.
use std::{path::Path, process::Command, time::Duration};

use crate::common::{output, run_ok, serial, tool};

const FILES: &[&str] = &[
    "/usr/bin/cwatch",
    "/lib/systemd/system/cwatch.service",
    "/etc/cwatch/cwatch.toml",
    "/usr/share/cwatch/prometheus/cwatch-rules.yml",
    "/usr/share/cwatch/prometheus/prometheus.yml",
    "/usr/share/cwatch/grafana/cwatch.json",
    "/usr/share/doc/cwatch/README.md",
];
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/cwatch.service";

/// dpkg with ARGS, retried while another package manager holds the lock.
fn dpkg(args: &[&str]) -> String {
    let mut waited = Duration::ZERO;
    loop {
        let out = output(Command::new(tool("dpkg")).args(args));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return text;
        }
        let locked = text.contains("lock") && text.contains("dpkg");
        assert!(
            locked && waited < Duration::from_secs(300),
            "dpkg {args:?} failed ({}):\n{text}",
            out.status
        );
        std::thread::sleep(Duration::from_secs(2));
        waited += Duration::from_secs(2);
    }
}

fn installed() -> bool {
    let out = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", "cwatch"]));
    String::from_utf8_lossy(&out.stdout).contains("installed")
}

/// Processes running /usr/bin/cwatch.
fn installed_binary_running() -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if std::fs::read_link(entry.path().join("exe"))
            .is_ok_and(|exe| exe == Path::new("/usr/bin/cwatch"))
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn deb_installs_enables_without_starting_and_purges_cleanly() {
    let _serial = serial();
    let deb = std::env::var("CWATCH_DEB")
        .expect("CWATCH_DEB is not set: run the deploy tests through `cargo xtask test`, which builds the .deb");
    assert!(Path::new(&deb).is_file(), "{deb} does not exist");
    if installed() {
        dpkg(&["--purge", "cwatch"]); // a leftover of an interrupted run
    }

    // What the package holds.
    let listing = run_ok(Command::new("dpkg-deb").args(["--contents", &deb]));
    for file in FILES {
        assert!(
            listing.contains(&format!(".{file}")),
            "{file} not in the .deb:\n{listing}"
        );
    }
    let info = run_ok(Command::new("dpkg-deb").args(["--info", &deb]));
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(info.contains(script), "no {script} in the .deb:\n{info}");
    }

    // Install: files, version, enabled, not started.
    let log = dpkg(&["--install", &deb]);
    assert!(log.contains("enabled, not started"), "{log}");
    assert!(installed());
    for file in FILES {
        assert!(Path::new(file).is_file(), "{file} missing after install");
    }
    let version = run_ok(Command::new("/usr/bin/cwatch").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("cwatch {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        std::fs::read_link(WANTS).ok().as_deref(),
        Some(Path::new("/lib/systemd/system/cwatch.service")),
        "the service is not enabled"
    );
    assert_eq!(
        installed_binary_running(),
        Vec::<u32>::new(),
        "started by the install"
    );
    // The service's own user, without a login.
    let account = run_ok(Command::new("getent").args(["passwd", "cwatch"]));
    assert!(
        account
            .trim_end()
            .ends_with(":/nonexistent:/usr/sbin/nologin"),
        "{account}"
    );
    let verify = output(Command::new(tool("systemd-analyze")).args([
        "verify",
        "--man=no",
        "/lib/systemd/system/cwatch.service",
    ]));
    let text = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && text.trim().is_empty(),
        "installed unit: {text}"
    );
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "cwatch"]));
    assert!(conffiles.contains("/etc/cwatch/cwatch.toml"), "{conffiles}");

    // Remove: the program goes, the admin's config stays (Debian's rule).
    dpkg(&["--remove", "cwatch"]);
    assert!(!Path::new("/usr/bin/cwatch").exists());
    assert!(Path::new("/etc/cwatch/cwatch.toml").exists());

    // Purge, on a fresh bpffs holding a pinned map under /sys/fs/bpf/cwatch.
    let bpftool = tool("bpftool");
    let script = format!(
        "set -e; mount -t bpf bpf /sys/fs/bpf; \
         if ls -A /sys/fs/bpf | grep -v '[.]debug$' | grep -q .; then echo not a fresh bpffs >&2; exit 97; fi; \
         mkdir /sys/fs/bpf/cwatch; \
         {bpftool} map create /sys/fs/bpf/cwatch/CLOSE_WAIT type hash key 8 value 8 entries 16 name cwatch_test; \
         test -e /sys/fs/bpf/cwatch/CLOSE_WAIT; \
         dpkg --purge cwatch; \
         if [ -e /sys/fs/bpf/cwatch ]; then echo pins left >&2; exit 98; fi; echo PINS-GONE",
        bpftool = bpftool.display()
    );
    let out = run_ok(
        Command::new(tool("unshare"))
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    );
    assert!(out.contains("PINS-GONE"), "{out}");

    // Nothing left.
    assert!(!installed(), "still known to dpkg");
    for file in FILES {
        assert!(!Path::new(file).exists(), "{file} left after purge");
    }
    for path in [
        "/etc/cwatch",
        "/usr/share/cwatch",
        "/usr/share/doc/cwatch",
        WANTS,
        "/etc/systemd/system/cwatch.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/cwatch.service.dsh-also",
    ] {
        assert!(
            std::fs::symlink_metadata(path).is_err(),
            "{path} left after purge"
        );
    }
}
