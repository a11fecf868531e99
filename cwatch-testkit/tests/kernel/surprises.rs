//! Kernel surprises: no BTF, a BTF without a field cwatch reads, a BTF
//! without the tracepoint it attaches to (the running kernel's BTF with one
//! name edited, through the hidden `--kernel-btf`), `bpf()` refused
//! outright and refused only at attach (a seccomp filter, `cwatch-deny`).
//! Each is one line naming what is missing and the feature to enable, exit
//! 2, nothing half-started: no pin directory left, no program left loaded;
//! `cwatch doctor` reports the same.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use cwatch_testkit::{
    daemon::{caps_wrapper, cwatch_bin, private_pin_dir},
    workspace_binary,
};

use crate::common::{exits_2_with_one_line, serial};

/// The running kernel's BTF with the name `from` (a whole string of its
/// string section) replaced by `to`, of the same length: every type id and
/// offset stays, only that name is gone.
fn edited_btf(dir: &Path, from: &str, to: &str) -> PathBuf {
    assert_eq!(from.len(), to.len());
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    let needle = [b"\0", from.as_bytes(), b"\0"].concat();
    let at = btf
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{from} not in this kernel's BTF"));
    btf[at + 1..at + 1 + to.len()].copy_from_slice(to.as_bytes());
    let path = dir.join(format!("{to}.btf"));
    std::fs::write(&path, btf).unwrap();
    path
}

/// `cwatch ARGS`, under `wrapper` and the test daemons' capabilities.
fn cwatch(wrapper: &[&str], args: &[&str]) -> Command {
    let mut all: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    all.extend(caps_wrapper());
    all.push(cwatch_bin().unwrap().display().to_string());
    let mut cmd = Command::new(&all[0]);
    cmd.args(&all[1..]).args(args);
    cmd
}

/// Ids of every BPF program loaded now (`bpftool prog show`).
fn program_ids() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.iter().filter_map(|p| p["id"].as_u64()).collect()
}

/// Programs loaded since `before` that no live process holds: what a
/// failed start would leave behind.
fn left_behind(before: &[u64]) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.into_iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| !before.contains(&id)))
        .filter(|p| p["pids"].as_array().is_none_or(|pids| pids.is_empty()))
        .collect()
}

/// Runs `cwatch run` expecting a refusal: exit 2, the last stderr line
/// names the problem (`one_line`: and is the only line), nothing left.
fn refused(wrapper: &[&str], extra: &[&str], one_line: bool) -> String {
    let pins = private_pin_dir();
    let pin_dir = pins.display().to_string();
    let before = program_ids();
    let mut args = vec!["run", "--listen", "127.0.0.1:0", "--pin-dir", &pin_dir];
    args.extend(extra);
    let mut cmd = cwatch(wrapper, &args);
    let line = if one_line {
        exits_2_with_one_line(&mut cmd)
    } else {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        stderr.lines().last().unwrap_or_default().to_string()
    };
    assert!(line.starts_with("cwatch: "), "{line}");
    assert!(!pins.exists(), "a failed start left {}", pins.display());
    assert_eq!(
        left_behind(&before),
        Vec::<serde_json::Value>::new(),
        "programs left loaded"
    );
    line
}

fn doctor(wrapper: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["doctor"];
    args.extend(extra);
    let out = cwatch(wrapper, &args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cwatch cannot run here"), "{text}");
    text
}

#[test]
fn btf_missing_or_lacking_a_field_or_a_tracepoint_refuses_in_one_line() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("cwatch-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let line = refused(&[], &["--kernel-btf", "/nonexistent/vmlinux"], true);
    assert!(
        line.contains("no usable kernel BTF at /nonexistent/vmlinux"),
        "{line}"
    );
    assert!(line.contains("CONFIG_DEBUG_INFO_BTF=y"), "{line}");
    let report = doctor(&[], &["--kernel-btf", "/nonexistent/vmlinux"]);
    assert!(
        report.contains("FAIL no usable kernel BTF at /nonexistent/vmlinux"),
        "{report}"
    );

    let no_field = edited_btf(&dir, "skc_num", "skc_nuX");
    let shown = no_field.display().to_string();
    let line = refused(&[], &["--kernel-btf", &shown], true);
    assert!(line.contains("has no field `skc_num`"), "{line}");
    assert!(line.contains(&shown) && line.contains("fix: "), "{line}");
    let report = doctor(&[], &["--kernel-btf", &shown]);
    assert!(
        report.contains("FAIL kernel BTF: `sock.__sk_common` has no field `skc_num`"),
        "{report}"
    );

    let no_tp = edited_btf(
        &dir,
        "btf_trace_inet_sock_set_state",
        "btf_trace_inet_sock_set_statX",
    );
    let shown = no_tp.display().to_string();
    let line = refused(&[], &["--kernel-btf", &shown], true);
    assert!(
        line.contains("tracepoint sock/inet_sock_set_state is missing from the kernel BTF"),
        "{line}"
    );
    assert!(line.contains("CONFIG_TRACEPOINTS"), "{line}");
    let report = doctor(&[], &["--kernel-btf", &shown]);
    assert!(
        report.contains("FAIL tracepoint sock/inet_sock_set_state is missing from the kernel BTF"),
        "{report}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bpf_refused_outright_or_at_attach_leaves_nothing_behind() {
    let _serial = serial();
    let deny = workspace_binary("CWATCH_DENY_BIN", "cwatch-deny").unwrap();
    let deny = deny.display().to_string();

    // Every bpf() call refused (a seccomp filter, an LSM): caught before
    // anything starts.
    let line = refused(&[&deny, "--"], &[], true);
    assert!(
        line.contains("the kernel refuses BPF: creating a map failed"),
        "{line}"
    );
    assert!(line.contains("seccomp"), "{line}");
    let report = doctor(&[&deny, "--"], &[]);
    assert!(report.contains("FAIL the kernel refuses BPF"), "{report}");

    // Maps and programs load, attaching is refused: the pins the start
    // created go again, the programs with the process.
    let line = refused(
        &[&deny, "--bpf-cmd", "17", "--bpf-cmd", "28", "--"],
        &[],
        false,
    );
    assert!(
        line.contains("the kernel refused program `inet_sock_set_state`"),
        "{line}"
    );
    assert!(
        line.contains("Operation not permitted") || line.contains("EPERM"),
        "{line}"
    );
}
