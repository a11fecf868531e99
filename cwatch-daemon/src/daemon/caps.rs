/*!
Capabilities: the set cwatch needs to start ([`REQUIRED`] — exactly what
`deploy/systemd/cwatch.service` and `deploy/kubernetes/daemonset.yaml` grant,
which tests check) and the smaller set it keeps once its programs are loaded
and attached and the first reconciliation is done ([`KEPT`]).

Why each one (found by running each operation with and without it, see the
README's *Capabilities* section):

| capability | needed for | after start |
|---|---|---|
| `CAP_BPF` | creating maps, loading programs, opening pins | dropped |
| `CAP_PERFMON` | loading and attaching the `tp_btf` tracing program | dropped |
| `CAP_SYS_ADMIN` | `setns()` into other network namespaces (sock_diag answers per namespace); mounting bpffs/tracefs when missing | kept |
| `CAP_SYS_PTRACE` | reading `/proc/<pid>/fd/N` links and opening `/proc/<pid>/ns/net` of processes with other credentials | kept |
| `CAP_DAC_READ_SEARCH` | listing `/proc/<pid>/fd` of processes of other users | kept |

Capabilities belong to threads, not processes, and the daemon has several by
the time it drops them (tokio workers, the blocking pool, the attribution
thread). [`drop_to_kept`] therefore sets the calling thread's sets, then
signals every other thread of the process to do the same from a signal
handler (how glibc's `setuid` and libcap's `psx` do it), until every entry
of `/proc/self/task` shows the new sets. Threads created afterwards inherit
them.
*/
use std::{
    fs,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub use caps::Capability;
use caps::Capability::{CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE};

/// What cwatch needs to start: the unit's `CapabilityBoundingSet=` and
/// `AmbientCapabilities=`, and the DaemonSet's `capabilities.add`.
pub const REQUIRED: &[Capability] = &[
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    CAP_DAC_READ_SEARCH,
];

/// What cwatch keeps once it is ready: its effective and permitted sets from
/// then on (less, if it was started with less).
pub const KEPT: &[Capability] = &[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("reading this thread's capabilities")]
    Read(#[source] caps::errors::CapsError),
    #[error("installing the capability-drop signal handler: {0}")]
    Handler(std::io::Error),
    #[error("capset on the daemon's own thread: {0}")]
    Capset(std::io::Error),
    #[error("threads still holding dropped capabilities after 5 s: {0:?}")]
    Stragglers(Vec<u32>),
}

/// The mask of `caps` as the kernel prints it in /proc/<pid>/status
/// (`CapEff: 00000000002000c0`).
pub fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// The names of the capabilities set in `mask`, in kernel order.
pub fn names(mask: u64) -> Vec<String> {
    caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .map(|c| (c.index(), c.to_string()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect()
}

/// The sets every thread gets: low and high 32 bits of the target mask.
static TARGET_LO: AtomicU32 = AtomicU32::new(0);
static TARGET_HI: AtomicU32 = AtomicU32::new(0);
static HANDLER: Once = Once::new();

/// Drops every capability not in [`KEPT`] from every thread of the process
/// (effective, permitted, inheritable and ambient sets). Returns the mask
/// the process now has.
pub fn drop_to_kept() -> Result<u64, CapsError> {
    let permitted = caps::read(None, caps::CapSet::Permitted).map_err(CapsError::Read)?;
    let target = permitted.iter().fold(0, |m, c| m | c.bitmask()) & mask(KEPT);
    TARGET_LO.store(target as u32, Ordering::SeqCst);
    TARGET_HI.store((target >> 32) as u32, Ordering::SeqCst);
    let signal = libc::SIGRTMIN() + 4;
    let mut installed = Ok(());
    HANDLER.call_once(|| installed = install_handler(signal));
    installed.map_err(CapsError::Handler)?;
    if !apply_to_this_thread() {
        return Err(CapsError::Capset(std::io::Error::last_os_error()));
    }
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let behind = threads_not_at(target);
        if behind.is_empty() {
            return Ok(target);
        }
        if Instant::now() >= deadline {
            return Err(CapsError::Stragglers(behind));
        }
        for tid in &behind {
            // SAFETY: tgkill with our own tgid; a thread that exited meanwhile
            // gives ESRCH, which the next scan accounts for.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    me as libc::c_int,
                    *tid as libc::c_int,
                    signal,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Threads of this process whose effective or permitted set is not `target`.
fn threads_not_at(target: u64) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue; // exited
        };
        let at = |key| status_mask(&status, key) == Some(target);
        if !(at("CapEff:") && at("CapPrm:")) {
            out.push(tid);
        }
    }
    out
}

/// A capability mask (`CapEff:` etc.) from the text of /proc/<pid>/status.
pub fn status_mask(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2) for the calling thread, then clears its ambient set. Only
/// syscalls and atomics: safe in a signal handler.
fn apply_to_this_thread() -> bool {
    let lo = TARGET_LO.load(Ordering::SeqCst);
    let hi = TARGET_HI.load(Ordering::SeqCst);
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are valid for the duration of the calls and
    // laid out as <linux/capability.h> v3 expects.
    unsafe {
        libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0
            && libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) == 0
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: errno is thread-local; restoring it keeps the interrupted code
    // from seeing the handler's errors.
    unsafe {
        let errno = *libc::__errno_location();
        apply_to_this_thread();
        *libc::__errno_location() = errno;
    }
}

fn install_handler(signal: libc::c_int) -> Result<(), std::io::Error> {
    // SAFETY: a zeroed sigaction is valid; the handler only makes syscalls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_the_kernel_bits() {
        // CAP_DAC_READ_SEARCH=2, CAP_SYS_PTRACE=19, CAP_SYS_ADMIN=21.
        assert_eq!(mask(KEPT), (1 << 2) | (1 << 19) | (1 << 21));
        // CAP_PERFMON=38, CAP_BPF=39.
        assert_eq!(mask(REQUIRED), mask(KEPT) | (1 << 38) | (1 << 39));
        assert_eq!(
            names(mask(KEPT)),
            ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"]
        );
    }

    #[test]
    fn kept_is_a_subset_of_required() {
        assert_eq!(mask(KEPT) & !mask(REQUIRED), 0);
    }

    #[test]
    fn status_lines_parse() {
        let status = "Name:\tcwatch\nCapInh:\t0000000000000000\nCapEff:\t0000000000280004\n";
        assert_eq!(status_mask(status, "CapEff:"), Some(0x28_0004));
        assert_eq!(status_mask(status, "CapBnd:"), None);
    }
}
