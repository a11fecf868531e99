//! `cwatch-churn`: a tight loopback connect/accept/close loop in one thread,
//! for a while, then one line `conns N errors E secs S rate R cpu_ns C`, C
//! being this process's CPU time per connection (loopback softirq work done
//! in our context included, where the kernel charges it to us).
//!
//! Each round connects to its own listener, accepts, and closes: by default
//! the client end first (the server end passes through CLOSE_WAIT, as in a
//! real leak's lifecycle) and then the server end; `--close server` the other
//! way round (the client end passes through CLOSE_WAIT); `--close reset` the
//! client end with an RST (SO_LINGER 0: no end passes through CLOSE_WAIT, so
//! every transition is one a CLOSE_WAIT watcher has nothing to do with).
//! `--exchange` sends a small request and answer over each connection before
//! the close, and `--long-lived N` keeps N other connections open for the
//! whole run, as a busy server has. Rounds rotate over `--listeners`
//! listeners on 127.77.0.x so that TIME_WAIT entries of one address do not
//! run out the ephemeral ports.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cwatch-churn", version)]
struct Cli {
    /// How long to loop, in seconds (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Listeners to rotate over (127.77.0.1 up).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    listeners: u8,
    /// Which end closes first: client, server, or reset (the client, with RST).
    #[arg(long, value_enum, default_value = "client")]
    close: Close,
    /// Send 64 bytes each way over each connection before closing it.
    #[arg(long)]
    exchange: bool,
    /// Connections kept open for the whole run.
    #[arg(long, default_value_t = 0)]
    long_lived: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Close {
    Client,
    Server,
    Reset,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(length) = Duration::try_from_secs_f64(cli.seconds) else {
        eprintln!("cwatch-churn: error: --seconds must be a positive number");
        return ExitCode::from(2);
    };
    match churn(length, &cli) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cwatch-churn: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn churn(length: Duration, cli: &Cli) -> anyhow::Result<String> {
    let mut bound = Vec::new();
    for i in 1..=cli.listeners {
        let ip = Ipv4Addr::new(127, 77, 0, i);
        let listener = TcpListener::bind(SocketAddr::from((ip, 0)))
            .with_context(|| format!("binding a listener on {ip}"))?;
        let addr = listener.local_addr()?;
        bound.push((listener, addr));
    }
    let mut kept = Vec::with_capacity(cli.long_lived);
    for i in 0..cli.long_lived {
        let (listener, addr) = &bound[i % bound.len()];
        let client = TcpStream::connect(addr).context("a long-lived connection")?;
        let (server, _) = listener.accept()?;
        kept.push((client, server));
    }
    let cpu_start = cpu_ns();
    let started = Instant::now();
    let (mut conns, mut errors) = (0u64, 0u64);
    'run: loop {
        for (listener, addr) in &bound {
            if conns % 256 == 0 && started.elapsed() >= length {
                break 'run;
            }
            match round(listener, *addr, cli) {
                Ok(()) => conns += 1,
                Err(e) if e.kind() == ErrorKind::AddrNotAvailable => errors += 1,
                Err(e) => return Err(e).context("connect/accept"),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_ns() - cpu_start;
    Ok(format!(
        "conns {conns} errors {errors} secs {secs:.6} rate {:.1} cpu_ns {:.1}",
        conns as f64 / secs,
        cpu / conns.max(1) as f64
    ))
}

/// One connection: connect, accept, (exchange,) close one end, then the
/// other.
fn round(listener: &TcpListener, addr: SocketAddr, cli: &Cli) -> std::io::Result<()> {
    let mut client = TcpStream::connect(addr)?;
    let (mut server, _) = listener.accept()?;
    if cli.exchange {
        let mut buf = [0u8; 64];
        client.write_all(&buf)?;
        server.read_exact(&mut buf)?;
        server.write_all(&buf)?;
        client.read_exact(&mut buf)?;
    }
    match cli.close {
        Close::Client => {
            drop(client);
            drop(server);
        }
        Close::Server => {
            drop(server);
            drop(client);
        }
        Close::Reset => {
            rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO))?;
            drop(client);
            drop(server);
        }
    }
    Ok(())
}

/// CPU time of this process (user + system), in nanoseconds.
fn cpu_ns() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}
