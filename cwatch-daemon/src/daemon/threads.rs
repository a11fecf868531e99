/*!
Where the daemon's work runs, so that each thread holds only the
capabilities of its [`Role`]: tokio runtimes whose every thread (workers and
blocking pool) is named for its role and limited to it before it runs
anything ([`runtime`]), and OS threads of their own for the work that reads
other processes' `/proc` entries or enters namespaces ([`spawn`],
[`run_on`], [`spawn_runtime`]).

A new thread starts with its creator's sets, so privileged threads must be
created by a thread that still holds what they need: the main thread, before
it gives everything up.
*/
use std::{future::Future, io, thread::JoinHandle};

use anyhow::Context as _;
use tokio::runtime::Runtime;

use super::caps::{self, Role};

/// A multi-threaded runtime whose threads are all named for `role` and
/// limited to it from their start.
pub fn runtime(role: Role) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(role.thread_name())
        .on_thread_start(move || caps::limit_this_thread_to(role))
        .build()
}

/// An OS thread named for `role` running `f`; returns once the thread has
/// limited itself to the role (so that its creator may then drop what the
/// new thread must not keep, and find no thread over its role).
pub fn spawn<T, F>(role: Role, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (limited, wait) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(role.thread_name().into())
        .spawn(move || {
            caps::limit_this_thread_to(role);
            let _ = limited.send(());
            f()
        })?;
    let _ = wait.recv();
    Ok(handle)
}

/// Runs `f` on a thread of its own limited to `role`, awaits its result,
/// and returns once that thread is gone (no thread outlives its job).
pub async fn run_on<T, F>(role: Role, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = spawn(role, move || {
        let _ = tx.send(f());
    })
    .with_context(|| format!("starting the {} thread", role.thread_name()))?;
    let result = rx
        .await
        .with_context(|| format!("the {} thread ended early", role.thread_name()));
    // It has sent its result: all it does now is end.
    let _ = thread.join();
    result
}

/// An OS thread limited to `role` that runs `task` on a single-threaded
/// runtime of its own, whose blocking pool is limited the same way (work
/// that `spawn_blocking`s from there keeps the role's capabilities).
pub fn spawn_runtime<F>(role: Role, task: F) -> io::Result<JoinHandle<()>>
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn(role, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .thread_name(role.thread_name())
            .on_thread_start(move || caps::limit_this_thread_to(role))
            .build();
        match rt {
            Ok(rt) => rt.block_on(task),
            Err(err) => tracing::error!(thread = role.thread_name(), "no runtime: {err}"),
        }
    })
}
