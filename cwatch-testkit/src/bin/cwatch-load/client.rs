//! The `client` role: set the process name, make the connections from named
//! worker threads, then serve the client's stdin commands (`count`,
//! `close-all`, `shutdown-all`, `dup-all`, `fork`, `ports`) over the socket
//! table.

use std::ffi::CString;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::OnEof;
use crate::control::{self, say, say_all};
use crate::sockets::{Conn, Sockets};

/// File descriptors kept spare beyond the sockets (stdio, epoll, ...).
const SPARE_FDS: u64 = 32;
/// Retries of a refused or timed-out connect.
const CONNECT_RETRIES: u32 = 3;

/// What the command line asked the client to do.
pub struct Config {
    pub comm: Vec<u8>,
    pub targets: Vec<(SocketAddr, usize)>,
    pub on_eof: OnEof,
    pub threads: usize,
}

/// A parsed client command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Count,
    CloseAll,
    ShutdownAll,
    DupAll,
    Fork,
    Ports,
}

/// Parse one command line; the error is the full reply line.
fn parse_command(line: &str) -> Result<Command, String> {
    match control::split_command(line) {
        ("count", args) if args.is_empty() => Ok(Command::Count),
        ("close-all", args) if args.is_empty() => Ok(Command::CloseAll),
        ("shutdown-all", args) if args.is_empty() => Ok(Command::ShutdownAll),
        ("ports", args) if args.is_empty() => Ok(Command::Ports),
        ("dup-all", args) if args.is_empty() => Ok(Command::DupAll),
        ("fork", args) if args.is_empty() => Ok(Command::Fork),
        _ => Err(format!("error unknown command: {line}")),
    }
}

/// How many of `count` connections worker `worker` (of `workers`) makes.
fn share(count: usize, workers: usize, worker: usize) -> usize {
    count / workers + usize::from(worker < count % workers)
}

/// Set the calling thread's name (the process name on the main thread).
fn set_thread_name(name: &[u8]) -> Result<()> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let cname = CString::new(name).map_err(|_| anyhow!("name {shown:?} contains a NUL byte"))?;
    rustix::thread::set_name(&cname).with_context(|| format!("prctl(PR_SET_NAME, {shown:?})"))
}

/// Connect to `addr`, retrying a refused or timed-out connect.
fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut attempt = 0;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if attempt < CONNECT_RETRIES
                    && matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut) =>
            {
                attempt += 1;
                thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One worker: name itself, then make its share of every target's
/// connections. Stops early once another worker failed.
fn worker(index: usize, plan: Vec<(SocketAddr, usize)>, failed: &AtomicBool) -> Result<Vec<Conn>> {
    set_thread_name(format!("worker-{index}").as_bytes())?;
    let mut conns = Vec::with_capacity(plan.iter().map(|(_, n)| n).sum());
    for (addr, n) in plan {
        for _ in 0..n {
            if failed.load(Ordering::SeqCst) {
                return Ok(conns);
            }
            let stream = connect(addr).map_err(|e| {
                failed.store(true, Ordering::SeqCst);
                anyhow!("connect {addr}: {e}")
            })?;
            let port = stream
                .local_addr()
                .with_context(|| format!("local address of a socket to {addr}"))?
                .port();
            conns.push(Conn { stream, port });
        }
    }
    Ok(conns)
}

/// Make every connection from `config.threads` workers. The workers stay
/// alive (parked) afterwards, so the process keeps its `worker-<i>` threads.
fn connect_all(config: &Config) -> Result<Vec<Conn>> {
    let failed = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for index in 0..config.threads {
        let plan: Vec<(SocketAddr, usize)> = config
            .targets
            .iter()
            .map(|&(addr, count)| (addr, share(count, config.threads, index)))
            .collect();
        let failed = Arc::clone(&failed);
        let tx = tx.clone();
        thread::Builder::new()
            .spawn(move || {
                let _ = tx.send(worker(index, plan, &failed));
                drop(tx);
                loop {
                    thread::park();
                }
            })
            .with_context(|| format!("cannot start worker thread {index}"))?;
    }
    drop(tx);
    let mut conns = Vec::new();
    let mut first_error = None;
    for _ in 0..config.threads {
        match rx.recv() {
            Ok(Ok(mut mine)) => conns.append(&mut mine),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow!("a worker thread died"));
                break;
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(conns),
    }
}

/// Check that `total` sockets fit under the (raised) soft RLIMIT_NOFILE.
fn check_fd_budget(total: usize, soft: Option<u64>) -> Result<()> {
    let Some(soft) = soft else { return Ok(()) };
    let need = u64::try_from(total)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE_FDS);
    if need > soft {
        bail!(
            "too many sockets: {total} sockets need {need} file descriptors \
             ({SPARE_FDS} spare) but RLIMIT_NOFILE is {soft}"
        );
    }
    Ok(())
}

/// Run the client until stdin EOF (which exits the process from the stdin
/// reader thread).
pub fn run(config: Config) -> Result<()> {
    // First of all, while this is the only thread: the process name.
    set_thread_name(&config.comm).context("cannot set the process name")?;
    let soft = crate::raise_nofile_limit();
    let total: usize = config.targets.iter().map(|(_, n)| n).sum();
    check_fd_budget(total, soft)?;
    // Read stdin from the start, so EOF during the connects exits promptly.
    let commands = control::spawn_stdin_reader()?;

    let conns = connect_all(&config)?;
    if conns.len() != total {
        bail!("made {} connections instead of {total}", conns.len());
    }
    let sockets = Sockets::new(conns, config.on_eof)?;
    say_all(&[
        format!("connected {total}"),
        format!("pid {}", std::process::id()),
    ]);

    for line in commands {
        let reply = match parse_command(&line) {
            Err(reply) => reply,
            Ok(Command::Count) => {
                let (open, closed_on_eof) = sockets.count();
                format!("open {open} closed_on_eof {closed_on_eof}")
            }
            Ok(Command::CloseAll) => format!("closed {}", sockets.close_all()),
            Ok(Command::ShutdownAll) => format!("shutdown {}", sockets.shutdown_all()),
            Ok(Command::DupAll) => format!("duped {}", sockets.dup_all()),
            Ok(Command::Fork) => match fork_holder() {
                Ok(pid) => format!("forked {pid}"),
                Err(e) => format!("error fork: {e}"),
            },
            Ok(Command::Ports) => {
                let ports: Vec<String> = sockets.ports().iter().map(u16::to_string).collect();
                format!("ports {}", ports.join(","))
            }
        };
        say(&reply);
    }
    Ok(())
}

/// Forks a child that inherits every fd and only waits to be killed (by
/// pid, by the test that asked for it).
fn fork_holder() -> std::io::Result<i32> {
    // SAFETY: the child calls only async-signal-safe functions (pause) and
    // never returns into Rust code that could touch the parent's locks.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => loop {
            // SAFETY: async-signal-safe.
            unsafe { libc::pause() };
        },
        pid => Ok(pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for count in [0, 1, 3, 4, 5, 360, 1001] {
            for workers in 1..=9 {
                let shares: Vec<usize> = (0..workers).map(|w| share(count, workers, w)).collect();
                assert_eq!(shares.iter().sum::<usize>(), count, "{count}/{workers}");
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(max.unwrap() - min.unwrap() <= 1);
            }
        }
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("count"), Ok(Command::Count));
        assert_eq!(parse_command(" close-all "), Ok(Command::CloseAll));
        assert_eq!(parse_command("shutdown-all"), Ok(Command::ShutdownAll));
        assert_eq!(parse_command("ports"), Ok(Command::Ports));
        for line in ["", "close", "count 2", "CLOSE-ALL", "ports now"] {
            assert_eq!(
                parse_command(line),
                Err(format!("error unknown command: {line}"))
            );
        }
    }

    #[test]
    fn fd_budget() {
        assert!(check_fd_budget(100, Some(20_000)).is_ok());
        assert!(check_fd_budget(19_968, Some(20_000)).is_ok());
        let err = check_fd_budget(19_969, Some(20_000)).unwrap_err();
        assert!(err.to_string().contains("RLIMIT_NOFILE is 20000"));
        assert!(check_fd_budget(usize::MAX, None).is_ok());
    }

    #[test]
    fn workers_connect_their_share() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config {
            comm: b"test".to_vec(),
            targets: vec![(addr, 7)],
            on_eof: OnEof::Leak,
            threads: 3,
        };
        let conns = connect_all(&config).unwrap();
        assert_eq!(conns.len(), 7);
        assert!(conns.iter().all(|c| c.port != 0));
    }

    #[test]
    fn refused_connect_is_an_error() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let config = Config {
            comm: b"test".to_vec(),
            targets: vec![(addr, 2)],
            on_eof: OnEof::Leak,
            threads: 2,
        };
        let err = connect_all(&config).err().unwrap();
        assert!(err.to_string().starts_with(&format!("connect {addr}: ")));
    }
}
