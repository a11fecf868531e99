/*!
Network namespaces: which ones exist, and running a function inside each.

sock_diag answers only for the namespace its socket was created in, so
reconciliation visits every namespace that has a process in it (through
`/proc/<pid>/ns/net`) or a name (`/run/netns/<name>`, `ip netns add`). `setns()`
switches only the calling thread, so the visits happen on a dedicated thread
that is thrown away afterwards: no other task ever runs in a foreign
namespace.
*/
use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::{owners::ProcRoot, telemetry::Source};

/// One network namespace and a path that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNs {
    /// Inode of the namespace: the number `SockRecord::netns` carries and
    /// `readlink /proc/<pid>/ns/net` shows as `net:[N]`.
    pub inode: u64,
    pub path: PathBuf,
}

/// The inode number of this process's network namespace.
pub fn own_inode() -> Option<u32> {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
}

/// Every network namespace reachable from `proc` and `/run/netns`, the
/// daemon's own first.
pub fn list(proc: &ProcRoot) -> Vec<NetNs> {
    let mut found: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let own_inode = std::fs::metadata(proc.path("self/ns/net"))
        .map(|m| m.ino())
        .ok();
    let mut consider = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            found.entry(meta.ino()).or_insert(path);
        }
    };
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            consider(entry.path());
        }
    }
    for pid in proc.pids() {
        consider(proc.path(format!("{pid}/ns/net")));
    }
    let mut out: Vec<NetNs> = found
        .into_iter()
        .map(|(inode, path)| NetNs { inode, path })
        .collect();
    out.sort_by_key(|ns| Some(ns.inode) != own_inode);
    out
}

/// Runs `f` inside each of `namespaces` on a fresh thread; one result per
/// namespace, in order. A namespace that vanished or cannot be entered gives
/// its error, the others still run.
pub fn in_each<T, F>(namespaces: Vec<NetNs>, f: F) -> Vec<(NetNs, io::Result<T>)>
where
    T: Send + 'static,
    F: Fn() -> io::Result<T> + Send + 'static,
{
    let worker = std::thread::Builder::new()
        .name("cwatch-netns".into())
        .spawn(move || {
            namespaces
                .into_iter()
                .map(|ns| {
                    let result = enter(&ns.path).and_then(|()| f());
                    (ns, result)
                })
                .collect::<Vec<_>>()
        });
    match worker.map(|handle| handle.join()) {
        Ok(Ok(results)) => results,
        Ok(Err(_)) => Vec::new(),
        Err(err) => {
            tracing::warn!("cannot start the network namespace thread: {err}");
            Vec::new()
        }
    }
}

/// Moves the calling thread into the network namespace at `path`. Its
/// errors are [`NotEntered`], so a caller tells them from the dump's own.
fn enter(path: &Path) -> io::Result<()> {
    let entered = File::open(path).and_then(|file| {
        move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(LinkNameSpaceType::Network),
        )
        .map_err(io::Error::from)
    });
    entered.map_err(|e| io::Error::new(e.kind(), NotEntered(e)))
}

/// A namespace that could not be entered (vanished, not a namespace, no
/// permission).
#[derive(Debug, thiserror::Error)]
#[error("cannot enter the network namespace: {0}")]
pub struct NotEntered(io::Error);

/// Which source failed, for an error [`in_each`] gave: entering the
/// namespace, or what ran inside it (a sock_diag dump).
pub fn failure_source(err: &io::Error) -> Source {
    match err.get_ref() {
        Some(inner) if inner.is::<NotEntered>() => Source::Netns,
        _ => Source::SockDiag,
    }
}
