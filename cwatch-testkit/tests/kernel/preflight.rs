//! `cwatch doctor` on the real host (everything present: exit 0) and in a
//! private mount namespace without tracefs (exit 1, the problem and its fix
//! in plain words); and `check-config` on a real file.
use std::process::Command;

use cwatch_testkit::daemon::cwatch_bin;

use crate::common::{exits_2_with_one_line, serial};

#[test]
fn doctor_passes_here_and_names_a_missing_tracefs_with_its_fix() {
    let _serial = serial();
    let out = Command::new(cwatch_bin().unwrap())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for needle in [
        "ok   kernel BTF at /sys/kernel/btf/vmlinux",
        "ok   tracepoint sock/inet_sock_set_state",
        "ok   CAP_BPF",
        "cwatch can run here",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }

    let script =
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; exec \"$@\"";
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(cwatch_bin().unwrap())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL tracefs is not mounted"), "{text}");
    assert!(
        text.contains("fix: mount -t tracefs tracefs /sys/kernel/tracing"),
        "{text}"
    );
    assert!(text.contains("cwatch cannot run here"), "{text}");
}

#[test]
fn check_config_prints_the_effective_config_or_one_error_line() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("cwatch-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "leak_after = \"2m\"\nlabels = [\"unit\"]\n[web]\nmax_connections = 9\n",
    )
    .unwrap();
    let out = Command::new(cwatch_bin().unwrap())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for needle in [
        "leak_after = \"2m\"",
        "labels = [\"unit\"]",
        "max_connections = 9",
        "reconcile_interval = \"1m\"",
        "listen = \"127.0.0.1:9478\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[web]\nconfig_file = \"/nonexistent/web.yml\"\n").unwrap();
    let stderr = exits_2_with_one_line(
        Command::new(cwatch_bin().unwrap())
            .arg("check-config")
            .arg(&bad),
    );
    assert!(stderr.contains("/nonexistent/web.yml"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_without_capabilities_is_one_line_and_exit_2() {
    let _serial = serial();
    // Root with an empty capability set: loading would fail for certain.
    let stderr = exits_2_with_one_line(
        Command::new("setpriv")
            .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
            .arg(cwatch_bin().unwrap())
            .args(["run", "--listen", "127.0.0.1:1"]),
    );
    assert!(
        stderr.contains("missing CAP_BPF") && stderr.contains("fix:"),
        "{stderr}"
    );
}
