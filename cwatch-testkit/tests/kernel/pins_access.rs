//! The pins are the daemon's alone: its pin directory is mode 0700 and the
//! pins in it 0600, so an unprivileged user (`nobody`, through setpriv) can
//! neither list the directory nor open a pin with bpf() (bpftool), to read a
//! record or to forge one — even when a pin itself is made world-writable.
//! The control proves the check is real: with the directory opened up, the
//! same user reads and writes that pin.
use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use cwatch_testkit::{daemon::Daemon, user};

use crate::common::serial;

/// Runs `program args` as nobody: (success, stdout + stderr).
fn as_nobody(program: &str, args: &[&str]) -> (bool, String) {
    let wrapper = user::as_user(user::NOBODY);
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// (read, forge) attempts on the pin at `pin` as nobody: whether each worked.
fn nobody_reads_and_forges(pin: &Path) -> ((bool, String), (bool, String)) {
    let pin = pin.to_str().unwrap();
    let read = as_nobody("bpftool", &["map", "dump", "pinned", pin]);
    let forged = as_nobody(
        "bpftool",
        &[
            "map", "update", "pinned", pin, "key", "0", "0", "0", "0", "value", "99", "0", "0", "0",
        ],
    );
    (read, forged)
}

#[test]
fn an_unprivileged_user_can_neither_read_nor_forge_records() {
    let _serial = serial();
    let daemon = Daemon::start(&[]).unwrap();
    let dir = daemon.pin_dir.clone().expect("a private pin dir");
    assert_eq!(mode(&dir), 0o700, "the pin directory is owner-only");
    for pin in ["CLOSE_WAIT", "LINGER", "OWNERS", "LISTENERS", "LAYOUT"] {
        assert_eq!(mode(&dir.join(pin)), 0o600, "{pin}");
    }
    let (listed, text) = as_nobody("ls", &[dir.to_str().unwrap()]);
    assert!(!listed && text.contains("Permission denied"), "{text}");
    let close_wait = dir.join("CLOSE_WAIT");
    let (read, _) = nobody_reads_and_forges(&close_wait);
    assert!(
        !read.0 && read.1.contains("Permission denied"),
        "{}",
        read.1
    );

    // Even a pin made world-writable stays out of reach behind the
    // directory (the LAYOUT map: one u32, a harmless one to try on).
    let layout = dir.join("LAYOUT");
    chmod(&layout, 0o666);
    let (read, forged) = nobody_reads_and_forges(&layout);
    assert!(
        !read.0 && read.1.contains("Permission denied"),
        "{}",
        read.1
    );
    assert!(
        !forged.0 && forged.1.contains("Permission denied"),
        "{}",
        forged.1
    );

    // Control: with the directory opened up, the same user reads and
    // forges that pin — the directory is what stops it.
    chmod(&dir, 0o755);
    let (read, forged) = nobody_reads_and_forges(&layout);
    chmod(&dir, 0o700);
    chmod(&layout, 0o600);
    assert!(read.0, "control: {}", read.1);
    assert!(forged.0, "control: {}", forged.1);
    assert!(daemon.metrics().is_ok());
}
