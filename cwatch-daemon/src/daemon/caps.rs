/*!
Capabilities: the set cwatch needs to start ([`REQUIRED`] — exactly what
`deploy/systemd/cwatch.service` and `deploy/kubernetes/daemonset.yaml` grant,
which tests check), and what each of its threads keeps ([`Role`]): at most
[`KEPT`] once the programs are loaded and attached and the first
reconciliation is done, and only on the threads that need it.

Why each one (found by running each operation with and without it, see the
README's *Capabilities* section):

| capability | needed for | after start |
|---|---|---|
| `CAP_BPF` | creating maps, loading programs, opening pins | dropped |
| `CAP_PERFMON` | loading and attaching the `tp_btf` tracing program | dropped |
| `CAP_SYS_ADMIN` | `setns()` into other network namespaces (sock_diag answers per namespace); mounting bpffs/tracefs when missing | kept |
| `CAP_SYS_PTRACE` | reading `/proc/<pid>/fd/N` links and opening `/proc/<pid>/ns/net` of processes with other credentials | kept |
| `CAP_DAC_READ_SEARCH` | listing `/proc/<pid>/fd` of processes of other users | kept |

Capabilities belong to threads, not processes (a new thread starts with its
creator's sets, and a set once lowered cannot be raised again), so each
thread is limited to its [`Role`] as its first act ([`limit_this_thread`]):
the threads that parse HTTP and TLS from the network, and the runtime that
runs intake, reload and notices, hold none at all from the moment they
start; the threads that read other processes' `/proc` entries or enter
network namespaces keep only what that takes; the main thread, which
creates them all, gives up everything once they exist. [`over_their_role`]
reads `/proc/self/task` back to check it.

| thread | role | keeps |
|---|---|---|
| `cwatch` (main) | starts everything, then waits for a signal | nothing once ready |
| `cwatch-rt` | the async runtime: intake, SIGHUP, notices, sd_notify | nothing |
| `cwatch-http` | accept, TLS, HTTP, auth, rendering scrapes | nothing, from its start |
| `cwatch-start` | loading and attaching, the first reconciliation and walk | everything it was given; exits before ready |
| `cwatch-owners` | attribution: `/proc/<pid>/fd` of every process | `CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH` |
| `cwatch-labels` | owner labels for scrapes: `/proc/<pid>/exe` of every process | `CAP_SYS_PTRACE` |
| `cwatch-recon` | reconciliation passes: `/proc/<pid>/ns/net` of every process | `CAP_SYS_ADMIN`, `CAP_SYS_PTRACE` |
| `cwatch-netns` | one pass's visits: `setns()` and sock_diag in each namespace | as `cwatch-recon` (its creator) |
*/
use std::fs;

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

/// The most any thread keeps once cwatch is ready: the union of the
/// [`Role`]s that outlive the start (less, if it was started with less).
pub const KEPT: &[Capability] = &[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// What a thread of the daemon does, which names it, and which
/// capabilities it keeps (see the table above).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Main,
    Runtime,
    Http,
    Start,
    Owners,
    Labels,
    Reconcile,
    Netns,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Main,
        Role::Runtime,
        Role::Http,
        Role::Start,
        Role::Owners,
        Role::Labels,
        Role::Reconcile,
        Role::Netns,
    ];

    /// The thread name (at most 15 bytes: the kernel's `comm`).
    pub fn thread_name(self) -> &'static str {
        match self {
            Role::Main => "cwatch",
            Role::Runtime => "cwatch-rt",
            Role::Http => "cwatch-http",
            Role::Start => "cwatch-start",
            Role::Owners => "cwatch-owners",
            Role::Labels => "cwatch-labels",
            Role::Reconcile => "cwatch-recon",
            Role::Netns => "cwatch-netns",
        }
    }

    /// The capabilities a thread of this role keeps (what it was given, at
    /// most). The main thread keeps everything until it has created the
    /// others, then nothing.
    pub fn keeps(self) -> &'static [Capability] {
        match self {
            Role::Main | Role::Runtime | Role::Http => &[],
            Role::Start => REQUIRED,
            Role::Owners => &[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH],
            Role::Labels => &[CAP_SYS_PTRACE],
            Role::Reconcile | Role::Netns => &[CAP_SYS_ADMIN, CAP_SYS_PTRACE],
        }
    }

    pub fn from_thread_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.thread_name() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("reading this thread's capabilities")]
    Read(#[source] caps::errors::CapsError),
    #[error("capset on this thread: {0}")]
    Capset(std::io::Error),
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

/// Limits the calling thread to `keep` (of what it has): effective and
/// permitted sets, inheritable and ambient sets emptied. Returns the mask
/// it now has. Threads it creates from then on start with the same.
pub fn limit_this_thread(keep: &[Capability]) -> Result<u64, CapsError> {
    let permitted = caps::read(None, caps::CapSet::Permitted).map_err(CapsError::Read)?;
    let target = permitted.iter().fold(0, |m, c| m | c.bitmask()) & mask(keep);
    if set_this_thread(target) {
        Ok(target)
    } else {
        Err(CapsError::Capset(std::io::Error::last_os_error()))
    }
}

/// Limits the calling thread to its role, logging a failure (for thread
/// start hooks, which cannot return one).
pub fn limit_this_thread_to(role: Role) {
    if let Err(err) = limit_this_thread(role.keeps()) {
        tracing::error!(
            thread = role.thread_name(),
            "could not drop capabilities: {err}"
        );
    }
}

/// One thread of this process as `/proc/self/task` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub tid: u32,
    pub name: String,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// Every thread of the process `pid` (`/proc/<pid>/task`).
pub fn threads_of(pid: &str) -> Vec<ThreadCaps> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
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
        let get = |key| status_mask(&status, key).unwrap_or(u64::MAX);
        out.push(ThreadCaps {
            tid,
            name: status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            effective: get("CapEff:"),
            permitted: get("CapPrm:"),
            inheritable: get("CapInh:"),
            ambient: get("CapAmb:"),
        });
    }
    out
}

/// The role a thread of process `pid` plays: the main thread by its id,
/// the others by name.
pub fn role_of(pid: u32, thread: &ThreadCaps) -> Option<Role> {
    if thread.tid == pid {
        Some(Role::Main)
    } else {
        Role::from_thread_name(&thread.name)
    }
}

/// Threads of this process holding more than their role allows (or of no
/// known role), each described in one line; empty when all is as designed.
pub fn over_their_role() -> Vec<String> {
    let me = std::process::id();
    threads_of("self")
        .into_iter()
        .filter_map(|t| {
            let allowed = role_of(me, &t).map_or(0, |r| mask(r.keeps()));
            let held = t.effective | t.permitted | t.inheritable | t.ambient;
            (held & !allowed != 0)
                .then(|| format!("thread {} ({}) holds {:?}", t.tid, t.name, names(held)))
        })
        .collect()
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

/// capset(2) for the calling thread (effective = permitted = `target`,
/// inheritable empty), then clears its ambient set.
fn set_this_thread(target: u64) -> bool {
    let (lo, hi) = (target as u32, (target >> 32) as u32);
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
    fn roles_keep_no_more_than_kept_and_names_fit_comm() {
        for role in Role::ALL {
            assert!(role.thread_name().len() <= 15, "{role:?}");
            assert_eq!(Role::from_thread_name(role.thread_name()), Some(role));
            if role != Role::Start {
                assert_eq!(mask(role.keeps()) & !mask(KEPT), 0, "{role:?}");
            }
        }
        for role in [Role::Main, Role::Runtime, Role::Http] {
            assert_eq!(mask(role.keeps()), 0, "{role:?} keeps nothing");
        }
        let kept_by_some = Role::ALL
            .iter()
            .filter(|r| **r != Role::Start)
            .fold(0, |m, r| m | mask(r.keeps()));
        assert_eq!(kept_by_some, mask(KEPT), "KEPT is the union of the roles");
    }

    #[test]
    fn a_thread_limits_itself_and_its_children() {
        // Unprivileged test runs have nothing to drop; the limit must still
        // leave the thread with at most what it asked to keep.
        let (mine, child) = std::thread::spawn(|| {
            let mine = limit_this_thread(&[CAP_SYS_PTRACE]).unwrap();
            let child = std::thread::spawn(|| {
                caps::read(None, caps::CapSet::Permitted)
                    .unwrap()
                    .iter()
                    .fold(0, |m, c| m | c.bitmask())
            })
            .join()
            .unwrap();
            (mine, child)
        })
        .join()
        .unwrap();
        assert_eq!(mine & !mask(&[CAP_SYS_PTRACE]), 0);
        assert_eq!(child, mine, "a new thread starts with its creator's sets");
    }

    #[test]
    fn status_lines_parse() {
        let status = "Name:\tcwatch\nCapInh:\t0000000000000000\nCapEff:\t0000000000280004\n";
        assert_eq!(status_mask(status, "CapEff:"), Some(0x28_0004));
        assert_eq!(status_mask(status, "CapBnd:"), None);
    }
}
