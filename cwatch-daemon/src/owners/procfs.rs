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

/// Where `/proc` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcRoot(Arc<Path>);

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
        Self(Arc::from(path.as_ref()))
    }

    /// `rel` under the root (`"1/fd"` → `/proc/1/fd`).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.join(rel)
    }

    /// The socket fds of process `pid`: (fd, socket inode). A process that
    /// is gone or cannot be read yields an error; fds closed during the
    /// scan are skipped.
    pub fn socket_fds(&self, pid: u32) -> io::Result<Vec<(i32, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.path(format!("{pid}/fd")))? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = number::<i32>(entry.file_name().as_bytes()) else {
                continue;
            };
            if let Ok(target) = fs::read_link(entry.path())
                && let Some(inode) = socket_inode(&target)
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
        let raw = fs::read(self.path(format!("{pid}/comm"))).ok()?;
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
        let raw = fs::read(self.path(format!("{pid}/stat"))).ok()?;
        procfs_core::process::Stat::from_read(&raw[..]).ok()
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
        let Ok(dir) = fs::read_dir(self.path("")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| number(e.file_name().as_bytes()))
            .collect()
    }

    /// The text of `/proc/<pid>/cgroup`.
    pub fn cgroup(&self, pid: u32) -> Option<String> {
        fs::read_to_string(self.path(format!("{pid}/cgroup"))).ok()
    }

    /// The executable of `pid` (`exe` link).
    pub fn exe(&self, pid: u32) -> Option<String> {
        fs::read_link(self.path(format!("{pid}/exe")))
            .ok()
            .map(|p| p.display().to_string())
    }

    /// How many fds process `pid` has open. On procfs since Linux 6.2 the
    /// size of `/proc/<pid>/fd` is that count (the kernel counts the bits of
    /// its open-fd bitmap: one `stat`, under a microsecond whatever the
    /// count); otherwise the directory is listed (getdents, about 0.5 µs per
    /// fd) without reading any link.
    pub fn open_fds(&self, pid: u32) -> io::Result<u64> {
        let dir = self.path(format!("{pid}/fd"));
        let size = fs::metadata(&dir)?.len();
        let on_procfs =
            rustix::fs::statfs(&dir).is_ok_and(|s| s.f_type == rustix::fs::PROC_SUPER_MAGIC);
        if size > 0 && on_procfs {
            return Ok(size);
        }
        let mut count = 0;
        for entry in fs::read_dir(&dir)?.flatten() {
            count += u64::from(number::<i32>(entry.file_name().as_bytes()).is_some());
        }
        Ok(count)
    }

    /// The soft `RLIMIT_NOFILE` of `pid` (`Max open files` in
    /// `/proc/<pid>/limits`); `None` when it says `unlimited`.
    pub fn max_fds(&self, pid: u32) -> io::Result<Option<u64>> {
        let text = fs::read(self.path(format!("{pid}/limits")))?;
        soft_nofile(&text)
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

/// `socket:[123]` → 123.
pub fn socket_inode(target: &Path) -> Option<u64> {
    let bytes = target.as_os_str().as_bytes();
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

/// The soft limit of `Max open files` in a `/proc/<pid>/limits` text
/// (procfs-core's parser); `None` for `unlimited`.
pub fn soft_nofile(text: &[u8]) -> io::Result<Option<u64>> {
    use procfs_core::process::{LimitValue, Limits};
    let limits = Limits::from_read(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(match limits.max_open_files.soft_limit {
        LimitValue::Value(n) => Some(n),
        LimitValue::Unlimited => None,
    })
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

    /// `/proc/self/limits` of a shell on Linux 6.18, verbatim.
    const KERNEL_LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             96363                96363                processes 
Max open files            20000                20000                files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       96363                96363                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
";

    #[test]
    fn parses_the_soft_open_files_limit() {
        assert_eq!(soft_nofile(KERNEL_LIMITS.as_bytes()).unwrap(), Some(20000));
        let text = fixture::limits_text("1024", "524288");
        assert_eq!(soft_nofile(text.as_bytes()).unwrap(), Some(1024));
        let text = fixture::limits_text("unlimited", "unlimited");
        assert_eq!(soft_nofile(text.as_bytes()).unwrap(), None);
        assert!(soft_nofile(b"Max open files lots\n").is_err());
        assert!(soft_nofile(b"").is_err());
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
    fn counts_open_fds_and_reads_the_fd_limit_of_a_fixture() {
        let mut proc = FakeProc::new();
        proc.process(10, 1, "server")
            .socket(3, 500)
            .socket(4, 501)
            .file(0)
            .nofile("4096", "8192");
        proc.process(11, 1, "bare");
        let root = proc.root();
        // Not procfs: the fixture's directory size is no fd count.
        assert_eq!(root.open_fds(10).unwrap(), 3);
        assert_eq!(root.max_fds(10).unwrap(), Some(4096));
        assert_eq!(root.open_fds(11).unwrap(), 0);
        assert!(root.max_fds(11).is_err(), "no limits file");
        assert!(root.open_fds(99).is_err() && root.max_fds(99).is_err());
    }

    #[test]
    fn counts_the_fds_of_a_real_process() {
        use std::process::{Command, Stdio};
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let root = ProcRoot::real();
        let pid = child.id();
        // stdin, stdout, stderr, and whatever the test runner passed down
        // without close-on-exec (cargo's jobserver pipe).
        let open = root.open_fds(pid);
        let listed = fs::read_dir(root.path(format!("{pid}/fd"))).map(|d| d.count() as u64);
        let max = root.max_fds(pid);
        let _ = child.kill();
        let _ = child.wait();
        let open = open.unwrap();
        assert!(open >= 3, "{open}");
        assert_eq!(listed.unwrap(), open, "the listing agrees");
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        assert_eq!(max.unwrap(), soft);
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
