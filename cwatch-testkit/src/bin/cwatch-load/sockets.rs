//! The client's socket table: every connected socket, kept open until a
//! command closes it, and (with `--on-eof close`) the epoll watcher thread
//! that closes a socket as soon as a read on it returns 0 (peer FIN) or fails.

use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

use anyhow::{Context, Result};
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{RecvFlags, Shutdown};

use crate::OnEof;
use crate::control;
use crate::pace;

/// One connected socket and its local port.
pub struct Conn {
    pub stream: TcpStream,
    pub port: u16,
}

#[derive(Default)]
struct Table {
    /// Indexed by the epoll user data; a slot is never reused.
    slots: Vec<Option<Conn>>,
    open: usize,
    closed_on_eof: usize,
    /// Second fds for the same sockets (`dup-all`), never closed.
    dups: Vec<std::os::fd::OwnedFd>,
}

/// The shared socket table.
pub struct Sockets {
    table: Mutex<Table>,
}

/// What reading a readable socket found.
#[derive(Debug, PartialEq, Eq)]
enum ReadOutcome {
    /// Nothing more to read; the connection is still up.
    Open,
    /// The peer sent FIN (read returned 0).
    Eof,
    /// The read failed (e.g. the peer sent RST).
    Failed,
}

/// Read (and discard) everything available without blocking.
fn drain(stream: &TcpStream) -> ReadOutcome {
    let mut buf = [0u8; 4096];
    loop {
        match rustix::net::recv(stream, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return ReadOutcome::Eof,
            Ok(_) => continue,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return ReadOutcome::Open,
            Err(_) => return ReadOutcome::Failed,
        }
    }
}

impl Sockets {
    /// Take ownership of `conns`; with [`OnEof::Close`], register them all
    /// with epoll and start the watcher thread.
    pub fn new(conns: Vec<Conn>, on_eof: OnEof) -> Result<Arc<Sockets>> {
        let open = conns.len();
        let sockets = Arc::new(Sockets {
            table: Mutex::new(Table {
                slots: conns.into_iter().map(Some).collect(),
                open,
                closed_on_eof: 0,
                dups: Vec::new(),
            }),
        });
        if on_eof == OnEof::Close {
            let poller = epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?;
            {
                let table = sockets.lock();
                for (index, slot) in table.slots.iter().enumerate() {
                    if let Some(conn) = slot {
                        epoll::add(
                            &poller,
                            &conn.stream,
                            epoll::EventData::new_u64(index as u64),
                            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
                        )
                        .context("epoll_ctl(EPOLL_CTL_ADD)")?;
                    }
                }
            }
            let watched = Arc::clone(&sockets);
            thread::Builder::new()
                .name("eof-watcher".to_string())
                .spawn(move || watched.watch(&poller))
                .context("cannot start the eof watcher thread")?;
        }
        Ok(sockets)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The watcher loop: close every socket whose peer has gone.
    fn watch(&self, poller: &OwnedFd) {
        let mut events = Vec::with_capacity(1024);
        loop {
            events.clear();
            match epoll::wait(poller, spare_capacity(&mut events), None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => control::fatal_exit(&anyhow::anyhow!("epoll_wait: {e}")),
            }
            let mut table = self.lock();
            for event in &events {
                let Ok(index) = usize::try_from(event.data.u64()) else {
                    continue;
                };
                let Some(slot) = table.slots.get_mut(index) else {
                    continue;
                };
                let gone = match slot {
                    Some(conn) => drain(&conn.stream) != ReadOutcome::Open,
                    None => false,
                };
                if gone && let Some(conn) = slot.take() {
                    let _ = epoll::delete(poller, &conn.stream);
                    drop(conn);
                    table.open -= 1;
                    table.closed_on_eof += 1;
                }
            }
        }
    }

    /// `(open, closed_on_eof)`.
    pub fn count(&self) -> (usize, usize) {
        let table = self.lock();
        (table.open, table.closed_on_eof)
    }

    /// Close every still-open socket; how many were closed.
    pub fn close_all(&self) -> usize {
        let mut table = self.lock();
        let closing: Vec<Conn> = table.slots.iter_mut().filter_map(Option::take).collect();
        table.open = 0;
        drop(table);
        let closed = closing.len();
        pace::drop_all(closing);
        closed
    }

    /// shutdown(SHUT_WR) every open socket without closing it; how many
    /// succeeded.
    pub fn shutdown_all(&self) -> usize {
        let table = self.lock();
        let mut done = 0;
        pace::for_each(table.slots.iter().flatten(), |conn| {
            if rustix::net::shutdown(&conn.stream, Shutdown::Write).is_ok() {
                done += 1;
            }
        });
        done
    }

    /// dup() every open socket's fd once and keep the copies; how many.
    pub fn dup_all(&self) -> usize {
        let mut table = self.lock();
        let dups: Vec<std::os::fd::OwnedFd> = table
            .slots
            .iter()
            .flatten()
            .filter_map(|conn| rustix::io::dup(&conn.stream).ok())
            .collect();
        let n = dups.len();
        table.dups.extend(dups);
        n
    }

    /// Local ports of the still-open sockets.
    pub fn ports(&self) -> Vec<u16> {
        let table = self.lock();
        table.slots.iter().flatten().map(|conn| conn.port).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn pair(listener: &TcpListener) -> (Conn, TcpStream) {
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let port = stream.local_addr().unwrap().port();
        let (peer, _) = listener.accept().unwrap();
        (Conn { stream, port }, peer)
    }

    #[test]
    fn drain_sees_eof_and_data() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (conn, mut peer) = pair(&listener);
        assert_eq!(drain(&conn.stream), ReadOutcome::Open);
        peer.write_all(b"hello").unwrap();
        drop(peer);
        let deadline = Instant::now() + Duration::from_secs(5);
        while drain(&conn.stream) != ReadOutcome::Eof {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn close_mode_closes_on_fin_and_commands_work() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, peer_a) = pair(&listener);
        let (b, _peer_b) = pair(&listener);
        let (c, _peer_c) = pair(&listener);
        let ports = vec![a.port, b.port, c.port];
        let sockets = Sockets::new(vec![a, b, c], OnEof::Close).unwrap();
        assert_eq!(sockets.count(), (3, 0));
        assert_eq!(sockets.ports(), ports);
        drop(peer_a);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sockets.count() != (2, 1) {
            assert!(Instant::now() < deadline, "not closed on FIN");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sockets.ports(), ports[1..].to_vec());
        assert_eq!(sockets.shutdown_all(), 2);
        assert_eq!(sockets.count(), (2, 1));
        assert_eq!(sockets.close_all(), 2);
        assert_eq!(sockets.count(), (0, 1));
        assert!(sockets.ports().is_empty());
    }

    #[test]
    fn leak_mode_keeps_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, peer_a) = pair(&listener);
        let sockets = Sockets::new(vec![a], OnEof::Leak).unwrap();
        drop(peer_a);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(sockets.count(), (1, 0));
    }
}
