/*!
The few `/proc` reads attribution needs, each as cheap as the kernel allows:
a socket fd is found with one `readlink` per fd (`socket:[inode]`), nothing
else is opened. (The procfs crate's fd iterator also stats every fd, which
doubles the syscalls of the one scan that has to be fast.)
*/
use std::{
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::table::Comm;

/// The socket fds of process `pid`: (fd, socket inode). A process that is
/// gone or cannot be read yields an error; fds closed during the scan are
/// skipped.
pub fn socket_fds(pid: u32) -> io::Result<Vec<(i32, u64)>> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = std::str::from_utf8(entry.file_name().as_bytes())
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
        else {
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
pub fn holds(pid: u32, fd: i32, inode: u64) -> bool {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .and_then(|t| socket_inode(&t))
        == Some(inode)
}

/// `socket:[123]` → 123.
pub fn socket_inode(target: &Path) -> Option<u64> {
    let bytes = target.as_os_str().as_bytes();
    let inner = bytes.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// The process name (`/proc/<pid>/comm`, the group leader's).
pub fn comm(pid: u32) -> Option<Comm> {
    let raw = fs::read(format!("/proc/{pid}/comm")).ok()?;
    let mut bytes = [0u8; cwatch_common::TASK_COMM_LEN];
    let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let len = name.len().min(bytes.len() - 1);
    bytes[..len].copy_from_slice(&name[..len]);
    Some(Comm::from_bytes(bytes))
}

/// Parent pid of `pid` (`/proc/<pid>/stat`, field 4).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces and parentheses: parse after the last ')'.
    let after = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    let text = std::str::from_utf8(after).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Children of process `pid` (of all its threads), from
/// `/proc/<pid>/task/*/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
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
pub fn family(pid: u32, limit: usize) -> Vec<u32> {
    let mut out = vec![pid];
    let mut next = 0;
    while next < out.len() && out.len() < limit {
        let kids = children(out[next]);
        out.extend(kids.into_iter().take(limit - out.len()));
        next += 1;
    }
    out
}

/// Every process (thread-group) id in `/proc`.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            std::str::from_utf8(e.file_name().as_bytes())
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode(Path::new("socket:[4026]")), Some(4026));
        assert_eq!(socket_inode(Path::new("pipe:[4026]")), None);
        assert_eq!(socket_inode(Path::new("socket:[x]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn finds_our_own_socket_and_its_fd() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let me = std::process::id();
        let fds = socket_fds(me).unwrap();
        let (_, inode) = *fds.iter().find(|(f, _)| *f == fd).expect("our fd");
        assert!(holds(me, fd, inode));
        assert!(!holds(me, fd, inode + 1));
        drop(listener);
        assert!(!holds(me, fd, inode), "closed fd no longer holds it");
        assert!(comm(me).is_some());
        assert_eq!(
            parent(me),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32))
        );
        assert!(pids().contains(&me));
        assert!(socket_fds(u32::MAX).is_err());
    }
}
