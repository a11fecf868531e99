/*!
Every `/proc` read the daemon makes, under one injectable root ([`ProcRoot`],
like node_exporter's `--path.procfs`): `/proc` on a host, a fixture tree the
test built in a unit test. Attribution, labels, the namespace list and the
direct `cwatch ls` fallback all read through it, so their rules are tested
without root.

Each read is as cheap as the kernel allows: a socket fd is found with one
`readlink` per fd (`socket:[inode]`), nothing else is opened. (The procfs
crate's fd iterator also stats every fd, which doubles the syscalls of the
one scan that has to be fast.) Parsing is apart from reading: `stat` lines
go through procfs-core, the rest through the small parsers below.
*/
use std::{
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use procfs_core::FromRead as _;

use crate::table::Comm;

/// Where `/proc` is, and (in the daemon) the counter of its reads that
/// failed for another reason than the process being gone.
#[derive(Clone, Debug)]
pub struct ProcRoot(Arc<Path>, Option<prometheus::IntCounter>);

impl PartialEq for ProcRoot {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ProcRoot {}

impl Default for ProcRoot {
    fn default() -> Self {
        Self::real()
    }
}

impl ProcRoot {
    /// The host's `/proc`.
    pub fn real() -> Self {
        Self::at("/proc")
    }

    /// A `/proc` look-alike at `path` (tests build one).
    pub fn at(path: impl AsRef<Path>) -> Self {
        Self(Arc::from(path.as_ref()), None)
    }

    /// Counts failed reads in `failures` (`cwatch_source_failures_total{source="procfs"}`).
    pub fn counting_failures(self, failures: prometheus::IntCounter) -> Self {
        Self(self.0, Some(failures))
    }

    /// Passes `result` on, counting an error unless it only says that the
    /// process is gone (it exited: no file, or ESRCH).
    fn noted<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(err) = &result
            && err.kind() != io::ErrorKind::NotFound
            && err.raw_os_error() != Some(libc::ESRCH)
            && let Some(failures) = &self.1
        {
            failures.inc();
        }
        result
    }

    /// `rel` under the root (`"1/fd"` → `/proc/1/fd`).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.join(rel)
    }

    /// The socket fds of process `pid`: (fd, socket inode). A process that
    /// is gone or cannot be read yields an error; fds closed during the
    /// scan are skipped.
    pub fn socket_fds(&self, pid: u32) -> io::Result<Vec<(i32, u64)>> {
        use rustix::fs::{CWD, Dir, Mode, OFlags, openat, readlinkat_raw};
        let opened = openat(
            CWD,
            self.path(format!("{pid}/fd")),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        );
        let mut dir = self.noted(opened.and_then(Dir::new).map_err(io::Error::from))?;
        let mut out = Vec::new();
        // Every link is read relative to the fd directory (one path
        // component to look up, not four), into one buffer: a walk reads
        // millions of them.
        let mut link = [0u8; 64];
        while let Some(entry) = dir.read() {
            let Ok(entry) = entry else { continue };
            let Some(fd) = number::<i32>(entry.file_name().to_bytes()) else {
                continue;
            };
            let Ok(fds) = dir.fd() else { break };
            if let Ok(len) = readlinkat_raw(fds, entry.file_name(), &mut link[..])
                && let Some(inode) = socket_inode_bytes(&link[..len.min(link.len())])
            {
                out.push((fd, inode));
            }
        }
        Ok(out)
    }

    /// Whether `pid`'s fd `fd` still is socket `inode`: one `readlink`.
    pub fn holds(&self, pid: u32, fd: i32, inode: u64) -> bool {
        fs::read_link(self.path(format!("{pid}/fd/{fd}")))
            .ok()
            .and_then(|t| socket_inode(&t))
            == Some(inode)
    }

    /// The process name (`comm`, the group leader's).
    pub fn comm(&self, pid: u32) -> Option<Comm> {
        let raw = self
            .noted(fs::read(self.path(format!("{pid}/comm"))))
            .ok()?;
        Some(comm_of(&raw))
    }

    /// Parent pid of `pid` (`stat` field 4).
    pub fn parent(&self, pid: u32) -> Option<u32> {
        u32::try_from(self.stat(pid)?.ppid).ok()
    }

    /// When `pid` started, in clock ticks since boot (`stat` field 22): with
    /// the pid, it names one process for good (pids are reused).
    pub fn start_time(&self, pid: u32) -> Option<u64> {
        Some(self.stat(pid)?.starttime)
    }

    fn stat(&self, pid: u32) -> Option<procfs_core::process::Stat> {
        let raw = self
            .noted(fs::read(self.path(format!("{pid}/stat"))))
            .ok()?;
        stat_of(&raw)
    }

    /// Children of process `pid` (of all its threads), from
    /// `task/*/children`.
    pub fn children(&self, pid: u32) -> Vec<u32> {
        let Ok(tasks) = fs::read_dir(self.path(format!("{pid}/task"))) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_ascii_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        out
    }

    /// `pid` and all its descendants, at most `limit` processes.
    pub fn family(&self, pid: u32, limit: usize) -> Vec<u32> {
        let mut out = vec![pid];
        let mut next = 0;
        while next < out.len() && out.len() < limit {
            let kids = self.children(out[next]);
            out.extend(kids.into_iter().take(limit - out.len()));
            next += 1;
        }
        out
    }

    /// Every process (thread-group) id.
    pub fn pids(&self) -> Vec<u32> {
        // Even "not found" counts here: the proc root itself is gone.
        let Ok(dir) = fs::read_dir(self.path("")).inspect_err(|_| {
            if let Some(failures) = &self.1 {
                failures.inc();
            }
        }) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| number(e.file_name().as_bytes()))
            .collect()
    }

    /// The text of `/proc/<pid>/cgroup` (bytes that are not UTF-8, from a
    /// cgroup named so, as `\xNN`).
    pub fn cgroup(&self, pid: u32) -> Option<String> {
        let raw = self
            .noted(fs::read(self.path(format!("{pid}/cgroup"))))
            .ok()?;
        Some(crate::text::lossless(&raw).into_owned())
    }

    /// The executable of `pid` (`exe` link), its exact bytes (see
    /// [`crate::text::lossless`]).
    pub fn exe(&self, pid: u32) -> Option<String> {
        self.noted(fs::read_link(self.path(format!("{pid}/exe"))))
            .ok()
            .map(|p| crate::text::lossless(p.as_os_str().as_bytes()).into_owned())
    }

    /// `net.ipv4.ip_local_port_range` (the kernel's default when unreadable).
    pub fn ephemeral_ports(&self) -> (u16, u16) {
        let text =
            fs::read_to_string(self.path("sys/net/ipv4/ip_local_port_range")).unwrap_or_default();
        port_range(&text).unwrap_or((32768, 60999))
    }
}

/// A decimal file name (`"123"`); anything else is `None`.
fn number<T: std::str::FromStr>(name: &[u8]) -> Option<T> {
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// A `stat` line, parsed by procfs-core once it has the kernel's shape
/// (`PID (NAME) S …`, the name being anything the process chose). The crate
/// cuts the line at its parentheses unchecked and panicked on other lines
/// (`42 () )¡`, found by the fuzz loop).
pub fn stat_of(raw: &[u8]) -> Option<procfs_core::process::Stat> {
    let text = String::from_utf8_lossy(raw);
    let line = text.trim();
    let (open, close) = (line.find('(')?, line.rfind(')')?);
    let shaped = open >= 1
        && close > open
        && line.as_bytes().get(close + 1) == Some(&b' ')
        && line
            .get(close + 2..)
            .is_some_and(|rest| !rest.is_empty() && rest.is_ascii());
    if !shaped {
        return None;
    }
    procfs_core::process::Stat::from_read(raw).ok()
}

/// `socket:[123]` → 123.
pub fn socket_inode(target: &Path) -> Option<u64> {
    socket_inode_bytes(target.as_os_str().as_bytes())
}

/// [`socket_inode`] of a link's bytes.
fn socket_inode_bytes(bytes: &[u8]) -> Option<u64> {
    let inner = bytes.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// A `comm` file's bytes (newline-terminated, at most 15 bytes of name).
pub fn comm_of(raw: &[u8]) -> Comm {
    let mut bytes = [0u8; cwatch_common::TASK_COMM_LEN];
    let name = raw.strip_suffix(b"\n").unwrap_or(raw);
    let len = name.len().min(bytes.len() - 1);
    bytes[..len].copy_from_slice(&name[..len]);
    Comm::from_bytes(bytes)
}

/// `"32768\t60999\n"` → (32768, 60999).
pub fn port_range(text: &str) -> Option<(u16, u16)> {
    let mut bounds = text
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low <= high => Some((low, high)),
        _ => None,
    }
}

mod fds;
#[cfg(test)]
pub(crate) mod fixture;

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::{fixture::FakeProc, *};

    #[test]
    fn parses_socket_links_ranges_and_names() {
        assert_eq!(socket_inode(Path::new("socket:[4026]")), Some(4026));
        assert_eq!(socket_inode(Path::new("pipe:[4026]")), None);
        assert_eq!(socket_inode(Path::new("socket:[x]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
        assert_eq!(port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(port_range("9 1"), None);
        assert_eq!(comm_of(b"order-svc\n").as_str(), "order-svc");
        assert_eq!(
            comm_of(b"a-name-longer-than-15").as_str(),
            "a-name-longer-t"
        );
    }

    #[test]
    fn stat_lines_not_shaped_like_the_kernel_s_are_refused_not_a_panic() {
        // Found by the fuzz loop: procfs-core panicked on each of these.
        for line in [
            &b"42 () )\xc2\xa1\n"[..],
            b"(x) S 1",
            b"42 )x( S 1",
            b"42 (x)",
        ] {
            assert!(
                stat_of(line).is_none(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let real = b"42 (evil) (name) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 4200 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let stat = stat_of(real).expect("a name with parentheses is fine");
        assert_eq!(
            (stat.ppid, stat.starttime, stat.comm.as_str()),
            (1, 4200, "evil) (name")
        );
    }

    #[test]
    fn reads_a_fixture_tree() {
        let mut proc = FakeProc::new();
        proc.process(10, 1, "server").socket(3, 500).socket(4, 501);
        proc.process(11, 10, "worker").socket(5, 502);
        proc.process(12, 1, "other");
        let root = proc.root();
        let mut fds = root.socket_fds(10).unwrap();
        fds.sort_unstable();
        assert_eq!(fds, vec![(3, 500), (4, 501)]);
        assert!(root.holds(11, 5, 502) && !root.holds(11, 5, 500));
        assert_eq!(root.parent(11), Some(10));
        assert_eq!(root.start_time(11), Some(11_000));
        assert_eq!(root.family(10, 256), vec![10, 11]);
        assert_eq!(root.family(10, 1), vec![10]);
        let mut pids = root.pids();
        pids.sort_unstable();
        assert_eq!(pids, vec![10, 11, 12]);
        assert_eq!(
            root.comm(12).map(|c| c.as_str().into_owned()).as_deref(),
            Some("other")
        );
        assert!(root.socket_fds(99).is_err());
        assert_eq!(root.ephemeral_ports(), (32768, 60999));
    }

    #[test]
    fn failed_reads_are_counted_but_a_process_that_exited_is_not() {
        let mut proc = FakeProc::new();
        proc.process(10, 1, "server").socket(3, 500);
        let failures = prometheus::IntCounter::new("f", "f").unwrap();
        let root = proc.root().counting_failures(failures.clone());
        assert_eq!(root.pids(), vec![10]);
        assert!(root.socket_fds(99).is_err() && root.comm(99).is_none());
        assert_eq!(failures.get(), 0, "pid 99 is simply gone");
        // An fd table the daemon may not read (a real permission failure).
        std::fs::write(proc.dir().join("11"), "").unwrap();
        std::fs::create_dir_all(proc.dir().join("12")).unwrap();
        std::fs::write(proc.dir().join("12/fd"), "not a directory").unwrap();
        assert!(root.socket_fds(12).is_err());
        assert_eq!(failures.get(), 1, "ENOTDIR counts");
        // The proc root vanishes.
        let dir = proc.dir().to_path_buf();
        drop(proc);
        assert!(!dir.exists());
        assert!(root.pids().is_empty());
        assert_eq!(failures.get(), 2, "a vanished proc root counts");
    }

    #[test]
    fn finds_our_own_socket_and_its_fd() {
        let root = ProcRoot::real();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let me = std::process::id();
        let fds = root.socket_fds(me).unwrap();
        let (_, inode) = *fds.iter().find(|(f, _)| *f == fd).expect("our fd");
        assert!(root.holds(me, fd, inode));
        assert!(!root.holds(me, fd, inode + 1));
        drop(listener);
        assert!(!root.holds(me, fd, inode), "closed fd no longer holds it");
        assert!(root.comm(me).is_some());
        assert_eq!(
            root.parent(me),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32))
        );
        assert!(root.start_time(me).is_some_and(|t| t > 0));
        assert!(root.pids().contains(&me));
    }
}
