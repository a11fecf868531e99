//! `cwatch-load`: the loopback workload generator used by the cwatch
//! integration tests.
//!
//! This file owns the command line (clap), the loopback-only address check,
//! raising `RLIMIT_NOFILE`, and dispatching to the `server` or `client` role.
//! Each process is driven by line commands on stdin and answers with one
//! flushed line per reply on stdout (see `control`); stdin EOF exits 0.

mod client;
mod control;
mod listener;
mod pace;
mod server;
mod sockets;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Test workload generator for cwatch: creates TCP sockets on loopback that
/// end up in CLOSE_WAIT, controlled through line commands on stdin.
#[derive(Debug, Parser)]
#[command(name = "cwatch-load", version)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Listen on loopback addresses and hold every accepted socket open.
    Server(ServerArgs),
    /// Connect to loopback listeners and hold (leak or promptly close) the
    /// sockets.
    Client(ClientArgs),
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Loopback address to listen on (port 0 picks a free port); repeatable.
    #[arg(long = "listen", value_name = "ADDR:PORT", required = true, value_parser = parse_loopback)]
    listen: Vec<SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Process name to set with prctl(PR_SET_NAME) (the kernel keeps 15
    /// bytes); `\xNN` stands for the byte NN, so a name can hold any byte
    /// but NUL (invalid UTF-8 included).
    #[arg(long, value_name = "NAME", value_parser = parse_name_bytes)]
    comm: NameBytes,
    /// Loopback target; repeatable, paired in order with --count.
    #[arg(long = "connect", value_name = "ADDR:PORT", required = true, value_parser = parse_loopback)]
    connect: Vec<SocketAddr>,
    /// Number of connections to the --connect target at the same position.
    #[arg(long = "count", value_name = "N", required = true)]
    count: Vec<usize>,
    /// What to do when the peer closes a connection.
    #[arg(long = "on-eof", value_enum, default_value_t = OnEof::Leak)]
    on_eof: OnEof,
    /// Number of worker threads that make the connections.
    #[arg(long, value_name = "K", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
}

/// Client behaviour when the peer sends FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnEof {
    /// Never read, never close: the socket stays in CLOSE_WAIT.
    Leak,
    /// Close the socket as soon as a read returns 0.
    Close,
}

/// Is `ip` a loopback address (127/8, ::1, or ::ffff:127.x.y.z)?
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A name's bytes (a newtype: clap would take a `Vec` as many values).
#[derive(Clone, Debug)]
struct NameBytes(Vec<u8>);

/// clap value parser: a name with `\xNN` escapes, as bytes.
fn parse_name_bytes(text: &str) -> Result<NameBytes, String> {
    let mut out = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        match tail {
            [b'x', h, l, more @ ..] if b == b'\\' => {
                let hex = std::str::from_utf8(&[*h, *l])
                    .map_err(|e| e.to_string())?
                    .to_string();
                out.push(
                    u8::from_str_radix(&hex, 16).map_err(|_| format!("\\x{hex} is not a byte"))?,
                );
                rest = more;
            }
            _ => {
                out.push(b);
                rest = tail;
            }
        }
    }
    Ok(NameBytes(out))
}

/// clap value parser: a socket address that must be on loopback.
fn parse_loopback(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("not an ADDR:PORT socket address ({e})"))?;
    if !is_loopback(addr.ip()) {
        return Err(format!("{addr} is not a loopback address"));
    }
    Ok(addr)
}

/// Pair `--connect` and `--count` values in order.
fn pair_targets(
    connect: &[SocketAddr],
    count: &[usize],
) -> Result<Vec<(SocketAddr, usize)>, String> {
    if connect.len() != count.len() {
        return Err(format!(
            "--connect and --count must pair up: got {} --connect and {} --count",
            connect.len(),
            count.len()
        ));
    }
    if connect.is_empty() {
        return Err("at least one --connect ADDR:PORT --count N pair is needed".to_string());
    }
    Ok(connect.iter().copied().zip(count.iter().copied()).collect())
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit
/// now in force (`None` means unlimited).
fn raise_nofile_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let wanted = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, wanted) {
            eprintln!("cwatch-load: warning: cannot raise RLIMIT_NOFILE to the hard limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Role::Server(args) => {
            raise_nofile_limit();
            server::run(&args.listen)
        }
        Role::Client(args) => {
            let targets = match pair_targets(&args.connect, &args.count) {
                Ok(targets) => targets,
                Err(msg) => {
                    control::say(&format!("error {msg}"));
                    eprintln!("cwatch-load: error: {msg}");
                    return ExitCode::from(2);
                }
            };
            let config = client::Config {
                comm: args.comm.0,
                targets,
                on_eof: args.on_eof,
                threads: usize::from(args.threads),
            };
            client::run(config)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => control::fatal(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_accepted() {
        for text in [
            "127.0.0.1:7000",
            "127.0.1.2:0",
            "127.255.255.254:65535",
            "[::1]:7000",
            "[::ffff:127.0.1.1]:7000",
        ] {
            assert!(parse_loopback(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn other_addresses_are_rejected() {
        for text in [
            "10.0.0.1:7000",
            "0.0.0.0:7000",
            "[::]:7000",
            "[::ffff:10.0.0.1]:7000",
            "[fe80::1]:7000",
            "localhost:7000",
            "127.0.0.1",
        ] {
            assert!(parse_loopback(text).is_err(), "{text}");
        }
    }

    #[test]
    fn targets_pair_in_order() {
        let a: SocketAddr = "127.0.1.1:7100".parse().unwrap();
        let b: SocketAddr = "[::1]:7100".parse().unwrap();
        assert_eq!(
            pair_targets(&[a, b], &[360, 50]).unwrap(),
            vec![(a, 360), (b, 50)]
        );
        assert!(pair_targets(&[a, b], &[360]).is_err());
        assert!(pair_targets(&[a], &[1, 2]).is_err());
        assert!(pair_targets(&[], &[]).is_err());
    }

    #[test]
    fn names_take_any_byte_but_nul() {
        assert_eq!(parse_name_bytes("a\nb").unwrap().0, b"a\nb");
        assert_eq!(parse_name_bytes("x\\xff\\x1b").unwrap().0, b"x\xff\x1b");
        assert!(parse_name_bytes("\\xzz").is_err());
    }

    #[test]
    fn cli_parses_client_and_server() {
        let cli = Cli::try_parse_from([
            "cwatch-load",
            "client",
            "--comm",
            "leaky",
            "--connect",
            "127.0.1.1:7100",
            "--count",
            "3",
            "--connect",
            "127.0.1.2:7100",
            "--count",
            "4",
            "--on-eof",
            "close",
        ])
        .unwrap();
        match cli.role {
            Role::Client(args) => {
                assert_eq!(args.count, vec![3, 4]);
                assert_eq!(args.on_eof, OnEof::Close);
                assert_eq!(args.threads, 4);
            }
            Role::Server(_) => panic!("parsed as server"),
        }
        let cli =
            Cli::try_parse_from(["cwatch-load", "server", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.role, Role::Server(_)));
        assert!(
            Cli::try_parse_from(["cwatch-load", "server", "--listen", "192.168.1.1:80"]).is_err()
        );
        assert!(
            Cli::try_parse_from([
                "cwatch-load",
                "client",
                "--comm",
                "x",
                "--connect",
                "127.0.0.1:1",
                "--count",
                "1",
                "--threads",
                "0"
            ])
            .is_err()
        );
    }
}
