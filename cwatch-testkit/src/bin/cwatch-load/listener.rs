//! One server listener: binding it (SO_REUSEADDR, backlog 4096), its
//! accept thread holding every accepted socket open, waiting for a number of
//! accepts, and closing (FIN) or resetting (RST) it with all its sockets.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use rustix::io::Errno;
use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType};

use crate::control;
use crate::pace;

/// Listen backlog asked for (the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 4096;
/// How long `wait-accepted` waits before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// What an accept thread and the command handler share under one lock.
#[derive(Default)]
struct Accepted {
    /// Accepted sockets not yet closed.
    streams: Vec<TcpStream>,
    /// Sockets accepted in total, closed ones included.
    total: u64,
}

/// One listener and everything accepted from it.
pub struct Listener {
    /// The bound address (actual port), as printed in `listening`.
    pub addr: SocketAddr,
    /// The listening socket; `None` once closed.
    socket: Mutex<Option<Arc<TcpListener>>>,
    /// The accept thread; taken (and joined) by `close`/`reset`.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set before the listener is shut down, so the accept thread quits.
    closing: AtomicBool,
    accepted: Mutex<Accepted>,
    changed: Condvar,
}

/// Lock a mutex, ignoring poisoning (a panicked thread leaves the data
/// consistent: every update is a single push or increment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Create, bind and listen a TCP socket on exactly `addr`.
fn bind_listener(addr: SocketAddr) -> Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd: OwnedFd =
        rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)
            .context("socket")?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true).context("SO_REUSEADDR")?;
    rustix::net::bind(&fd, &addr).context("bind")?;
    rustix::net::listen(&fd, BACKLOG).context("listen")?;
    Ok(TcpListener::from(fd))
}

impl Listener {
    /// Bind `requested` and start its accept thread.
    pub fn start(requested: SocketAddr) -> Result<Arc<Listener>> {
        let socket =
            bind_listener(requested).with_context(|| format!("cannot listen on {requested}"))?;
        let addr = socket
            .local_addr()
            .with_context(|| format!("local address of the listener on {requested}"))?;
        let socket = Arc::new(socket);
        let listener = Arc::new(Listener {
            addr,
            socket: Mutex::new(Some(Arc::clone(&socket))),
            thread: Mutex::new(None),
            closing: AtomicBool::new(false),
            accepted: Mutex::new(Accepted::default()),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&listener);
        let handle = thread::Builder::new()
            .name(format!("accept-{}", addr.port()))
            .spawn(move || worker.accept_loop(&socket))
            .with_context(|| format!("cannot start the accept thread for {addr}"))?;
        *lock(&listener.thread) = Some(handle);
        Ok(listener)
    }

    /// Accept until the listener is closed, keeping every socket.
    fn accept_loop(&self, socket: &TcpListener) {
        loop {
            match socket.accept() {
                Ok((stream, _)) => self.keep(stream),
                Err(_) if self.closing.load(Ordering::SeqCst) => return,
                Err(e) => {
                    let errno = Errno::from_io_error(&e);
                    if matches!(errno, Some(Errno::INTR | Errno::CONNABORTED | Errno::PROTO)) {
                        continue;
                    }
                    let hint = if matches!(errno, Some(Errno::MFILE | Errno::NFILE)) {
                        format!(
                            " ({} sockets held on this listener; RLIMIT_NOFILE soft limit {})",
                            lock(&self.accepted).streams.len(),
                            nofile_text(
                                rustix::process::getrlimit(rustix::process::Resource::Nofile)
                                    .current
                            )
                        )
                    } else {
                        String::new()
                    };
                    control::fatal_exit(&anyhow!("accept on {}: {e}{hint}", self.addr));
                }
            }
        }
    }

    fn keep(&self, stream: TcpStream) {
        let mut accepted = lock(&self.accepted);
        accepted.streams.push(stream);
        accepted.total += 1;
        self.changed.notify_all();
    }

    pub fn total(&self) -> u64 {
        lock(&self.accepted).total
    }

    /// Wait until `n` sockets were accepted in total; the reply line.
    pub fn wait_accepted(&self, n: u64) -> String {
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut accepted = lock(&self.accepted);
        while accepted.total < n {
            if self.closing.load(Ordering::SeqCst) {
                return format!(
                    "error listener {} is closed with {} accepted, cannot reach {n}",
                    self.addr, accepted.total
                );
            }
            let now = Instant::now();
            if now >= deadline {
                return format!("error timeout waiting for {n} on {}", self.addr);
            }
            accepted = self
                .changed
                .wait_timeout(accepted, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        format!("accepted {} {}", self.addr, accepted.total)
    }

    /// Close the listener and every accepted socket; with `reset`, set
    /// SO_LINGER {on, 0} first so the peers get RST instead of FIN.
    /// Returns the number of accepted sockets closed.
    pub fn close(&self, reset: bool) -> Result<usize> {
        let socket = lock(&self.socket)
            .take()
            .ok_or_else(|| anyhow!("listener {} is closed", self.addr))?;
        self.closing.store(true, Ordering::SeqCst);
        // Take the connections whose handshake already completed, so they
        // are closed like the accepted ones instead of being reset.
        if socket.set_nonblocking(true).is_ok() {
            while let Ok((stream, _)) = socket.accept() {
                // accept4 does not pass O_NONBLOCK on; keep it blocking anyway.
                let _ = stream.set_nonblocking(false);
                self.keep(stream);
            }
        }
        // shutdown(SHUT_RDWR) on a listening socket wakes the accept thread
        // (accept fails with EINVAL); then the last reference is dropped.
        let _ = rustix::net::shutdown(&*socket, Shutdown::Both);
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
        drop(socket);
        let streams = std::mem::take(&mut lock(&self.accepted).streams);
        let closed = streams.len();
        if reset {
            for stream in &streams {
                rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO))
                    .with_context(|| format!("SO_LINGER on a socket of {}", self.addr))?;
            }
        }
        pace::drop_all(streams);
        Ok(closed)
    }
}

fn nofile_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}
