/*!
The fd figures of a process for the fd-exhaustion forecast: how many fds it
has open (`/proc/<pid>/fd`) and its soft `RLIMIT_NOFILE`
(`/proc/<pid>/limits`), read through [`ProcRoot`] like every other `/proc`
read.
*/
use std::{fs, io, os::unix::ffi::OsStrExt};

use procfs_core::FromRead as _;

use super::{ProcRoot, number};

impl ProcRoot {
    /// How many fds process `pid` has open. On procfs since Linux 6.2 the
    /// size of `/proc/<pid>/fd` is that count (the kernel counts the bits of
    /// its open-fd bitmap: one `stat`, under a microsecond whatever the
    /// count); otherwise the directory is listed (getdents, about 0.5 µs per
    /// fd) without reading any link.
    pub fn open_fds(&self, pid: u32) -> io::Result<u64> {
        if let Some(size) = self.fd_count(pid)? {
            return Ok(size);
        }
        let dir = self.path(format!("{pid}/fd"));
        let mut count = 0;
        for entry in self.noted(fs::read_dir(&dir))?.flatten() {
            count += u64::from(number::<i32>(entry.file_name().as_bytes()).is_some());
        }
        Ok(count)
    }

    /// How many fds `pid` has open as procfs says it in the size of
    /// `/proc/<pid>/fd` (Linux 6.2 and later: one `stat`); `None` where it
    /// does not (an older kernel, or not procfs).
    pub fn fd_count(&self, pid: u32) -> io::Result<Option<u64>> {
        let dir = self.path(format!("{pid}/fd"));
        let size = self.noted(fs::metadata(&dir))?.len();
        let on_procfs =
            rustix::fs::statfs(&dir).is_ok_and(|s| s.f_type == rustix::fs::PROC_SUPER_MAGIC);
        Ok((size > 0 && on_procfs).then_some(size))
    }

    /// The soft `RLIMIT_NOFILE` of `pid` (`Max open files` in
    /// `/proc/<pid>/limits`); `None` when it says `unlimited`.
    pub fn max_fds(&self, pid: u32) -> io::Result<Option<u64>> {
        let text = self.noted(fs::read(self.path(format!("{pid}/limits"))))?;
        soft_nofile(&text)
    }
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

#[cfg(test)]
mod tests {
    use super::{
        super::fixture::{self, FakeProc},
        *,
    };

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
}
