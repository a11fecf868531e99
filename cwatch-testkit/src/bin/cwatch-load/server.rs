//! The `server` role: starting the listeners (see `listener`), announcing
//! them, and the server's stdin commands (`count`, `wait-accepted`, `close`,
//! `reset`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;

use crate::control::{self, say_all};
use crate::listener::Listener;

/// A parsed server command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Count,
    WaitAccepted(SocketAddr, u64),
    Close(SocketAddr),
    Reset(SocketAddr),
}

/// Parse one command line; the error is the full reply line.
fn parse_command(line: &str) -> Result<Command, String> {
    let (verb, args) = control::split_command(line);
    let addr = |text: &str| {
        text.parse::<SocketAddr>()
            .map_err(|_| format!("error bad address {text:?} in command: {line}"))
    };
    match (verb, args.as_slice()) {
        ("count", []) => Ok(Command::Count),
        ("wait-accepted", [a, n]) => {
            let n = n
                .parse()
                .map_err(|_| format!("error bad count {n:?} in command: {line}"))?;
            Ok(Command::WaitAccepted(addr(a)?, n))
        }
        ("close", [a]) => Ok(Command::Close(addr(a)?)),
        ("reset", [a]) => Ok(Command::Reset(addr(a)?)),
        _ => Err(format!("error unknown command: {line}")),
    }
}

/// Bind every listener, start the accept threads, announce them, then serve
/// stdin commands until EOF.
pub fn run(addrs: &[SocketAddr]) -> Result<()> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &requested in addrs {
        listeners.push(Listener::start(requested)?);
    }
    let mut lines: Vec<String> = listeners
        .iter()
        .map(|l| format!("listening {}", l.addr))
        .collect();
    lines.push("ready".to_string());
    say_all(&lines);
    let commands = control::spawn_stdin_reader()?;
    for line in commands {
        say_all(&handle_line(&listeners, &line));
    }
    Ok(())
}

/// Run one command line; the reply lines.
fn handle_line(listeners: &[Arc<Listener>], line: &str) -> Vec<String> {
    let command = match parse_command(line) {
        Ok(command) => command,
        Err(reply) => return vec![reply],
    };
    let find = |addr: SocketAddr| {
        listeners
            .iter()
            .find(|l| l.addr == addr)
            .ok_or_else(|| format!("error no listener {addr}"))
    };
    let reply = match command {
        Command::Count => {
            let mut lines: Vec<String> = listeners
                .iter()
                .map(|l| format!("accepted {} {}", l.addr, l.total()))
                .collect();
            lines.push("end".to_string());
            return lines;
        }
        Command::WaitAccepted(addr, n) => find(addr).map(|l| l.wait_accepted(n)),
        Command::Close(addr) | Command::Reset(addr) => {
            let (reset, verb) = match command {
                Command::Reset(_) => (true, "reset"),
                _ => (false, "closed"),
            };
            find(addr).map(|l| match l.close(reset) {
                Ok(n) => format!("{verb} {addr} {n}"),
                Err(e) => format!("error {e:#}"),
            })
        }
    };
    vec![reply.unwrap_or_else(|e| e)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("count"), Ok(Command::Count));
        assert_eq!(
            parse_command("wait-accepted 127.0.1.1:7100 360"),
            Ok(Command::WaitAccepted(sa("127.0.1.1:7100"), 360))
        );
        assert_eq!(
            parse_command("close [::1]:7100"),
            Ok(Command::Close(sa("[::1]:7100")))
        );
        assert_eq!(
            parse_command("reset [::ffff:127.0.1.1]:7100"),
            Ok(Command::Reset(sa("[::ffff:127.0.1.1]:7100")))
        );
    }

    #[test]
    fn bad_commands_give_error_lines() {
        for line in ["", "hello", "count 1", "close", "wait-accepted 127.0.0.1:1"] {
            assert_eq!(
                parse_command(line),
                Err(format!("error unknown command: {line}"))
            );
        }
        assert!(
            parse_command("wait-accepted 127.0.0.1:1 many")
                .unwrap_err()
                .starts_with("error bad count")
        );
        assert!(
            parse_command("close nowhere")
                .unwrap_err()
                .starts_with("error bad address")
        );
    }

    #[test]
    fn close_sends_fin_and_counts() {
        use std::io::Read;
        let listener = Listener::start(sa("127.0.0.1:0")).unwrap();
        let addr = listener.addr;
        assert_ne!(addr.port(), 0);
        let mut clients: Vec<TcpStream> =
            (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let listeners = vec![listener];
        assert_eq!(
            handle_line(&listeners, &format!("wait-accepted {addr} 5")),
            vec![format!("accepted {addr} 5")]
        );
        assert_eq!(
            handle_line(&listeners, "count"),
            vec![format!("accepted {addr} 5"), "end".to_string()]
        );
        assert_eq!(
            handle_line(&listeners, &format!("close {addr}")),
            vec![format!("closed {addr} 5")]
        );
        for client in &mut clients {
            let mut buf = [0u8; 1];
            assert_eq!(client.read(&mut buf).unwrap(), 0);
        }
        assert_eq!(
            handle_line(&listeners, &format!("close {addr}")),
            vec![format!("error listener {addr} is closed")]
        );
        assert!(
            handle_line(&listeners, &format!("wait-accepted {addr} 6"))[0]
                .starts_with("error listener")
        );
        assert!(TcpStream::connect(addr).is_err());
        assert_eq!(
            handle_line(&listeners, "close 127.0.0.2:1"),
            vec!["error no listener 127.0.0.2:1"]
        );
    }

    #[test]
    fn reset_sends_rst() {
        use std::io::Read;
        let listener = Listener::start(sa("127.0.0.1:0")).unwrap();
        let addr = listener.addr;
        let mut client = TcpStream::connect(addr).unwrap();
        let listeners = vec![listener];
        handle_line(&listeners, &format!("wait-accepted {addr} 1"));
        assert_eq!(
            handle_line(&listeners, &format!("reset {addr}")),
            vec![format!("reset {addr} 1")]
        );
        let mut buf = [0u8; 1];
        let err = client.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }
}
