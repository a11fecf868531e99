/*!
The kernel filesystems BPF tools rely on: bpffs (pinned maps) at
/sys/fs/bpf and tracefs (tracepoint ids, `bpftool prog tracelog`) at
/sys/kernel/tracing. Minimal hosts and containers often have neither mounted.
cwatch mounts them when it can and otherwise says exactly what to run.

The programs this release attaches (tp_btf) need neither, so a failure here is
a warning, not a reason to refuse to start.
*/
use std::path::Path;

use rustix::{
    fs::statfs,
    mount::{MountFlags, mount},
};
use tracing::{info, warn};

/// A filesystem cwatch wants mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub fstype: &'static str,
    /// The `source` argument of mount(2) (`bpf` or `nodev`).
    pub source: &'static str,
    pub path: &'static str,
    /// `f_type` from statfs(2) once it is mounted.
    pub magic: u64,
}

pub const BPFFS: Wanted = Wanted {
    fstype: "bpf",
    source: "bpf",
    path: "/sys/fs/bpf",
    magic: 0xcafe_4a11,
};

pub const TRACEFS: Wanted = Wanted {
    fstype: "tracefs",
    source: "nodev",
    path: "/sys/kernel/tracing",
    magic: 0x7472_6163,
};

/// What `ensure` found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    AlreadyMounted,
    Mounted,
    /// Not mounted and mounting failed; the text says what to run.
    Failed(String),
}

/// The shell command that mounts `fs`.
pub fn mount_command(fs: &Wanted) -> String {
    format!("mount -t {} {} {}", fs.fstype, fs.source, fs.path)
}

pub fn is_mounted(fs: &Wanted) -> bool {
    statfs(Path::new(fs.path)).is_ok_and(|st| st.f_type as u64 == fs.magic)
}

/// Mounts `fs` unless it already is.
pub fn ensure(fs: &Wanted) -> Outcome {
    if is_mounted(fs) {
        return Outcome::AlreadyMounted;
    }
    match mount(fs.source, fs.path, fs.fstype, MountFlags::empty(), None) {
        Ok(()) if is_mounted(fs) => Outcome::Mounted,
        Ok(()) => Outcome::Failed(format!(
            "mounted {} at {} but statfs does not see it; run: {}",
            fs.fstype,
            fs.path,
            mount_command(fs)
        )),
        Err(err) => Outcome::Failed(format!(
            "{} is not mounted at {} and mounting it failed ({err}); run as root: {}",
            fs.fstype,
            fs.path,
            mount_command(fs)
        )),
    }
}

/// Ensures bpffs and tracefs, logging what happened.
pub fn ensure_all() {
    for fs in [BPFFS, TRACEFS] {
        match ensure(&fs) {
            Outcome::AlreadyMounted => {}
            Outcome::Mounted => info!("mounted {} at {}", fs.fstype, fs.path),
            Outcome::Failed(why) => warn!("{why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_documented_ones() {
        assert_eq!(mount_command(&BPFFS), "mount -t bpf bpf /sys/fs/bpf");
        assert_eq!(
            mount_command(&TRACEFS),
            "mount -t tracefs nodev /sys/kernel/tracing"
        );
    }

    #[test]
    fn a_plain_directory_is_not_a_mount() {
        let not_bpffs = Wanted { path: "/", ..BPFFS };
        assert!(!is_mounted(&not_bpffs));
    }
}
