/*!
The pin directory, claimed before anything is loaded ([`claim`]):

- **One daemon per pin directory.** Two daemons on one directory would
  attach two sets of programs working on the same pinned maps, each
  correcting the other's records. The directory itself is locked (`flock`,
  exclusive: bpffs holds no regular files to lock), and the lock lives as
  long as the daemon — the kernel drops it when the process ends, even on
  SIGKILL, so it never goes stale. A second daemon refuses to start with
  one line naming the first (its pid, from `/proc/locks`).
- **Owner-only.** It is created (or changed to) mode 0700.
- **Usable, or not used at all.** Pins need a writable bpffs, and pins this
  build understands. A directory that is not on bpffs, cannot be created or
  written, or holds pins of a newer cwatch (a higher `LAYOUT` version),
  makes this run go without pins: one warning line says why,
  `cwatch_persistence_enabled` is 0, and nothing in the directory is
  touched.

With `--pin-dir none` nothing is pinned, so two daemons share nothing: each
has its own programs and maps and is right on its own, so nothing is locked
and both may run ("one host" is one pin directory).
*/
use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use cwatch_common::LAYOUT_VERSION;
use rustix::fs::{Access, AtFlags, FlockOperation, accessat, flock, statfs};
use tracing::warn;

use super::{mounts, pins};

/// What this run does with its pin directory.
#[derive(Debug)]
pub struct Claim {
    /// Where to pin; `None`: this run pins nothing.
    dir: Option<PathBuf>,
    /// Why nothing is pinned although a directory was configured.
    off: Option<String>,
    /// The locked directory, held until the daemon exits.
    _lock: Option<File>,
    /// Whether the claim created the directory (a failed start removes it
    /// again).
    created: bool,
}

impl Claim {
    /// Where to pin (`None`: nowhere).
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir.clone()
    }

    /// Whether the directory was made by this claim, not found.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether this run keeps its state across a restart.
    pub fn persistent(&self) -> bool {
        self.dir.is_some()
    }

    /// Why a configured directory is not used.
    pub fn why_off(&self) -> Option<&str> {
        self.off.as_deref()
    }
}

/// Another daemon holds the pin directory.
#[derive(Debug, thiserror::Error)]
#[error(
    "another cwatch ({holder}) is already running with the pin directory {dir}: stop it first, \
     or give this one its own --pin-dir"
)]
pub struct InUse {
    pub dir: String,
    /// "pid 1234" or what is known of it.
    pub holder: String,
}

/// Claims `dir` for this daemon (see the module doc). `Err` only when
/// another daemon holds it; every other problem means running without pins.
pub fn claim(dir: Option<&Path>) -> Result<Claim, InUse> {
    let Some(dir) = dir else {
        return Ok(Claim {
            dir: None,
            off: None,
            _lock: None,
            created: false,
        });
    };
    let off = |why: String, lock: Option<File>| {
        warn!(
            "pin directory {}: {why}; running without persistence: a restart forgets every \
             socket's true start and owner",
            dir.display()
        );
        Ok(Claim {
            dir: None,
            off: Some(why),
            _lock: lock,
            created: false,
        })
    };
    if let Some(why) = not_bpffs(dir) {
        return off(why, None);
    }
    let created = !dir.exists();
    if let Err(err) = pins::owner_only(dir) {
        return off(
            format!("cannot make it an owner-only directory ({err})"),
            None,
        );
    }
    let lock = match File::open(dir) {
        Ok(f) => f,
        Err(err) => return off(format!("cannot open it ({err})"), None),
    };
    match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(InUse {
                dir: dir.display().to_string(),
                holder: holder_of(&lock),
            });
        }
        Err(err) => return off(format!("cannot lock it ({err})"), None),
    }
    if let Err(err) = accessat(
        rustix::fs::CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    ) {
        return off(format!("not writable ({err})"), Some(lock));
    }
    if let Some(found) = pins::pinned_layout(dir).filter(|v| *v > LAYOUT_VERSION) {
        return off(
            format!(
                "its pins were written by a newer cwatch (layout version {found}, this one has \
                 {LAYOUT_VERSION}) and are left as they are; to pin with this version, remove \
                 the directory"
            ),
            Some(lock),
        );
    }
    Ok(Claim {
        dir: Some(dir.to_path_buf()),
        off: None,
        _lock: Some(lock),
        created,
    })
}

/// Why `dir` (or, when it does not exist, the nearest directory above it)
/// is not on bpffs; `None` when it is.
fn not_bpffs(dir: &Path) -> Option<String> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    match statfs(existing) {
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
        Ok(st) if st.f_type as u64 == mounts::BPFFS.magic => None,
        Ok(_) => Some(format!(
            "{} is not on a bpffs mount (pins need one, such as /sys/fs/bpf: {})",
            existing.display(),
            mounts::mount_command(&mounts::BPFFS)
        )),
        Err(err) => Some(format!("cannot statfs {} ({err})", existing.display())),
    }
}

/// Who holds the lock on `file`: "pid N (comm)" from /proc/locks.
fn holder_of(file: &File) -> String {
    let pid = file.metadata().ok().and_then(|meta| {
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let dev = meta.dev();
        flock_holder(&locks, libc::major(dev), libc::minor(dev), meta.ino())
    });
    match pid {
        Some(pid) => match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(comm) => format!("pid {pid}, {}", comm.trim()),
            Err(_) => format!("pid {pid}"),
        },
        None => "a process this one cannot see".to_string(),
    }
}

/// The pid holding a `flock` on the inode (`major`:`minor`, `ino`), from the
/// text of /proc/locks (`1: FLOCK  ADVISORY  WRITE 4242 00:1f:7 0 EOF`;
/// device numbers in hex). Waiters (`-> FLOCK …`) are not holders.
pub fn flock_holder(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = fields.get(5)?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let inode: u64 = id.next()?.parse().ok()?;
        ((maj, min, inode) == (major, minor, ino))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_comes_from_proc_locks() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 900 00:1f:7 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 00:2e:1234 0 EOF
2: -> FLOCK  ADVISORY  WRITE 5151 00:2e:1234 0 EOF
3: FLOCK  ADVISORY  READ 77 fd:01:1234 0 EOF
";
        assert_eq!(flock_holder(locks, 0, 0x2e, 1234), Some(4242));
        assert_eq!(flock_holder(locks, 0xfd, 1, 1234), Some(77));
        assert_eq!(
            flock_holder(locks, 0, 0x1f, 7),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(flock_holder(locks, 0, 0x2e, 9), None);
        assert_eq!(flock_holder("garbage\n\n1: FLOCK\n", 0, 0, 0), None);
    }

    #[test]
    fn a_directory_off_bpffs_is_not_used_nor_created() {
        let dir = std::env::temp_dir().join(format!("cwatch-pindir-{}/pins", std::process::id()));
        let claim = claim(Some(&dir)).unwrap();
        assert!(!claim.persistent());
        assert!(
            claim.why_off().unwrap().contains("not on a bpffs mount"),
            "{claim:?}"
        );
        assert!(!dir.exists(), "nothing created off bpffs");
        let none = super::claim(None).unwrap();
        assert!(!none.persistent() && none.why_off().is_none());
    }
}
