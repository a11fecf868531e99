//! `cwatch-hold`: holds `--count` TCP sockets in CLOSE_WAIT on loopback, for
//! benchmarks at scale. One process, one listener on `--listen` (its own
//! 127.x address, so that each holder has a full ephemeral port range), and
//! `--count` client connections to it. The listener's side of each
//! connection is shut down for writing at once (not closed), so every client
//! socket receives a FIN and sits in CLOSE_WAIT, never read, until this
//! process exits. The accepted side stays open in FIN_WAIT2, held by its fd:
//! a closed one would be an orphan, and the kernel resets orphans beyond
//! net.ipv4.tcp_max_orphans and times them out after tcp_fin_timeout.
//!
//! Each held socket therefore costs two descriptors; twice the count must fit
//! under RLIMIT_NOFILE (raised to the hard limit here): spread larger totals
//! over several processes. Prints `holding N` once all
//! are made, then waits for stdin EOF (or a kill) and exits, which closes
//! them all.

use std::io::Read as _;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

#[derive(Debug, Parser)]
#[command(name = "cwatch-hold", version)]
struct Cli {
    /// Loopback IPv4 address to listen on (port 0 picks one).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Sockets to hold in CLOSE_WAIT.
    #[arg(long)]
    count: usize,
}

/// Connections made and accepted between two short pauses: a burst of many
/// thousands of FINs overflows the loopback receive backlog
/// (net.core.netdev_max_backlog) and a dropped FIN is only retransmitted
/// after 200 ms or more.
const BATCH: usize = 64;
/// File descriptors kept free for stdio, the listener and a batch.
const SPARE_FDS: u64 = 16 + BATCH as u64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.listen.ip().is_loopback() {
        eprintln!(
            "cwatch-hold: error: {} is not a loopback address",
            cli.listen
        );
        return ExitCode::from(2);
    }
    let held = match hold(cli.listen, cli.count) {
        Ok(held) => held,
        Err(err) => {
            eprintln!("cwatch-hold: error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("holding {}", held.len());
    // Wait for EOF on stdin; exiting closes every socket.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    ExitCode::SUCCESS
}

/// Both ends of every held connection: the clients in CLOSE_WAIT and the
/// accepted ends (shut down for writing) in FIN_WAIT2.
struct Held {
    clients: Vec<TcpStream>,
    _accepted: Vec<TcpStream>,
}

impl Held {
    fn len(&self) -> usize {
        self.clients.len()
    }
}

fn hold(listen: SocketAddr, count: usize) -> anyhow::Result<Held> {
    let limit = raise_nofile_limit();
    if (count as u64).saturating_mul(2).saturating_add(SPARE_FDS) > limit {
        bail!(
            "{count} sockets (two descriptors each) do not fit under \
             RLIMIT_NOFILE {limit}: spread them over more processes"
        );
    }
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::with_capacity(count);
    let mut accepted = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = BATCH.min(count - clients.len());
        for _ in 0..batch {
            clients
                .push(TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?);
            let (server, _) = listener.accept().context("accepting")?;
            server
                .shutdown(Shutdown::Write)
                .context("shutting down the accepted end")?;
            accepted.push(server);
        }
        thread::sleep(Duration::from_micros(200));
    }
    Ok(Held {
        clients,
        _accepted: accepted,
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; the soft limit now.
fn raise_nofile_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
