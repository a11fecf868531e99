//! A `/proc` look-alike built by a test in a temporary directory: processes
//! with a `comm`, a `stat` line (parent and start time), `task/<pid>/children`,
//! socket fds as `socket:[inode]` links, other fds, a cgroup, an exe link and
//! a `limits` file. Enough for every read [`ProcRoot`](super::ProcRoot)
//! makes, without root.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use super::ProcRoot;

/// A fake `/proc`, removed when dropped.
pub struct FakeProc {
    dir: PathBuf,
}

/// One process of a [`FakeProc`], to add fds to.
pub struct FakeProcess {
    dir: PathBuf,
}

impl FakeProc {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cwatch-fakeproc-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sys/net/ipv4")).unwrap();
        fs::write(
            dir.join("sys/net/ipv4/ip_local_port_range"),
            "32768\t60999\n",
        )
        .unwrap();
        Self { dir }
    }

    pub fn root(&self) -> ProcRoot {
        ProcRoot::at(&self.dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds process `pid` (child of `ppid`, started at `pid * 1000` ticks).
    pub fn process(&mut self, pid: u32, ppid: u32, comm: &str) -> FakeProcess {
        let dir = self.dir.join(pid.to_string());
        fs::create_dir_all(dir.join("fd")).unwrap();
        fs::create_dir_all(dir.join(format!("task/{pid}"))).unwrap();
        fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(dir.join("stat"), stat_line(pid, ppid, comm)).unwrap();
        fs::write(dir.join(format!("task/{pid}/children")), "").unwrap();
        fs::write(dir.join("cgroup"), "0::/\n").unwrap();
        let parent_children = self.dir.join(format!("{ppid}/task/{ppid}/children"));
        if let Ok(mut text) = fs::read_to_string(&parent_children) {
            text.push_str(&format!("{pid} "));
            fs::write(&parent_children, text).unwrap();
        }
        FakeProcess { dir }
    }

    /// Process `pid`, added before.
    pub fn get(&self, pid: u32) -> FakeProcess {
        FakeProcess {
            dir: self.dir.join(pid.to_string()),
        }
    }

    /// Removes process `pid` (it exited).
    pub fn exit(&mut self, pid: u32) {
        let _ = fs::remove_dir_all(self.dir.join(pid.to_string()));
    }
}

impl Default for FakeProc {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl FakeProcess {
    /// `fd` is socket `inode`.
    pub fn socket(&mut self, fd: i32, inode: u64) -> &mut Self {
        let link = self.dir.join(format!("fd/{fd}"));
        let _ = fs::remove_file(&link);
        symlink(format!("socket:[{inode}]"), link).unwrap();
        self
    }

    /// `fd` is closed.
    pub fn close(&mut self, fd: i32) -> &mut Self {
        let _ = fs::remove_file(self.dir.join(format!("fd/{fd}")));
        self
    }

    /// `fd` is a file that is no socket.
    pub fn file(&mut self, fd: i32) -> &mut Self {
        let link = self.dir.join(format!("fd/{fd}"));
        let _ = fs::remove_file(&link);
        symlink("/dev/null", link).unwrap();
        self
    }

    /// The process's `limits`, with this soft and hard `RLIMIT_NOFILE`.
    pub fn nofile(&mut self, soft: &str, hard: &str) -> &mut Self {
        fs::write(self.dir.join("limits"), limits_text(soft, hard)).unwrap();
        self
    }

    /// The process's cgroup path.
    pub fn cgroup(&mut self, path: &str) -> &mut Self {
        fs::write(self.dir.join("cgroup"), format!("0::{path}\n")).unwrap();
        self
    }

    /// The process's executable.
    pub fn exe(&mut self, path: &str) -> &mut Self {
        let link = self.dir.join("exe");
        let _ = fs::remove_file(&link);
        symlink(path, link).unwrap();
        self
    }
}

/// A `stat` line as the kernel writes it (52 fields), with `ppid` and a
/// start time of `pid * 1000` ticks.
fn stat_line(pid: u32, ppid: u32, comm: &str) -> String {
    let mut fields = vec!["0".to_string(); 50];
    fields[0] = "S".into(); // state
    fields[1] = ppid.to_string();
    fields[19] = (u64::from(pid) * 1000).to_string(); // starttime (field 22)
    format!("{pid} ({comm}) {}\n", fields.join(" "))
}

/// A `limits` file as the kernel writes it (Linux 6.18), with `soft` and
/// `hard` open files.
pub fn limits_text(soft: &str, hard: &str) -> String {
    let row = |name: &str, soft: &str, hard: &str, unit: &str| {
        format!("{name:<26}{soft:<21}{hard:<21}{unit:<10}\n")
    };
    let mut text = row("Limit", "Soft Limit", "Hard Limit", "Units");
    for (name, s, h, unit) in [
        ("Max cpu time", "unlimited", "unlimited", "seconds"),
        ("Max file size", "unlimited", "unlimited", "bytes"),
        ("Max data size", "unlimited", "unlimited", "bytes"),
        ("Max stack size", "8388608", "unlimited", "bytes"),
        ("Max core file size", "0", "unlimited", "bytes"),
        ("Max resident set", "unlimited", "unlimited", "bytes"),
        ("Max processes", "96363", "96363", "processes"),
        ("Max open files", soft, hard, "files"),
        ("Max locked memory", "8388608", "8388608", "bytes"),
        ("Max address space", "unlimited", "unlimited", "bytes"),
        ("Max file locks", "unlimited", "unlimited", "locks"),
        ("Max pending signals", "96363", "96363", "signals"),
        ("Max msgqueue size", "819200", "819200", "bytes"),
        ("Max nice priority", "0", "0", ""),
        ("Max realtime priority", "0", "0", ""),
        ("Max realtime timeout", "unlimited", "unlimited", "us"),
    ] {
        text += &row(name, s, h, unit);
    }
    text
}
