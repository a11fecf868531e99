//! Drives `cwatch-load` processes: line commands on stdin, one reply line
//! per command on stdout. Each process is killed by pid when dropped.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::workspace_binary;

/// The `cwatch-load` binary (`CWATCH_LOAD_BIN`, or next to the tests).
pub fn load_bin() -> anyhow::Result<PathBuf> {
    workspace_binary("CWATCH_LOAD_BIN", "cwatch-load")
}

pub struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub pid: u32,
    what: String,
}

impl Load {
    /// Starts `cwatch-load ARGS`.
    pub fn spawn(args: &[String]) -> anyhow::Result<Load> {
        Self::spawn_wrapped(&[], args)
    }

    /// Starts `WRAPPER… cwatch-load ARGS` (e.g. `ip netns exec NS`); the
    /// wrapper must exec it, so that the pid is cwatch-load's.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[String]) -> anyhow::Result<Load> {
        Self::spawn_bin(&load_bin()?, wrapper, args)
    }

    /// Starts `WRAPPER… BIN ARGS`, `bin` being a `cwatch-load` (a copy
    /// another user can execute, say).
    pub fn spawn_bin(bin: &Path, wrapper: &[&str], args: &[String]) -> anyhow::Result<Load> {
        let cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        Self::start(cmd, args)
    }

    /// Starts a copy of cwatch-load at `binary` (a test's own path for it,
    /// e.g. one with a hostile name).
    pub fn spawn_from(binary: &Path, args: &[String]) -> anyhow::Result<Load> {
        Self::start(Command::new(binary), args)
    }

    fn start(mut cmd: Command, args: &[String]) -> anyhow::Result<Load> {
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting cwatch-load")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Load {
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            lines,
            what: args.join(" "),
        })
    }

    /// A server holding the accepted sockets of each listener.
    pub fn server(listen: &[String]) -> anyhow::Result<Load> {
        let mut args = vec!["server".to_string()];
        for addr in listen {
            args.extend(["--listen".to_string(), addr.clone()]);
        }
        let mut load = Load::spawn(&args)?;
        load.expect("ready", Duration::from_secs(30))?;
        Ok(load)
    }

    /// A client named `comm` with `count` connections to each target;
    /// `on_eof` is "leak" or "close". Returns once all are connected.
    pub fn client(comm: &str, targets: &[(String, usize)], on_eof: &str) -> anyhow::Result<Load> {
        Self::client_wrapped(&[], comm, targets, on_eof)
    }

    /// [`Load::client`] started through `wrapper` (see
    /// [`Load::spawn_wrapped`]).
    pub fn client_wrapped(
        wrapper: &[&str],
        comm: &str,
        targets: &[(String, usize)],
        on_eof: &str,
    ) -> anyhow::Result<Load> {
        let mut args = vec![
            "client".into(),
            "--comm".into(),
            comm.into(),
            "--on-eof".into(),
            on_eof.into(),
        ];
        for (addr, count) in targets {
            args.extend([
                "--connect".into(),
                addr.clone(),
                "--count".into(),
                count.to_string(),
            ]);
        }
        let mut load = Load::spawn_wrapped(wrapper, &args)?;
        load.expect("connected", Duration::from_secs(120))?;
        Ok(load)
    }

    /// Sends one command line.
    pub fn send(&mut self, command: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the next line starting with `prefix` (other lines are
    /// skipped; an `error` line fails).
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        loop {
            match self.lines.recv_timeout(timeout) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(line) if line.starts_with("error") => {
                    bail!("cwatch-load `{}` said: {line}", self.what)
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "cwatch-load `{}`: no `{prefix}` line within {timeout:?}",
                        self.what
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "cwatch-load `{}` exited before saying `{prefix}`",
                        self.what
                    )
                }
            }
        }
    }

    /// Sends `command` and returns the reply starting with `reply`.
    pub fn ask(&mut self, command: &str, reply: &str) -> anyhow::Result<String> {
        self.send(command)?;
        self.expect(reply, Duration::from_secs(60))
    }

    /// The last number on a reply line such as `closed 127.0.1.1:7000 360`.
    pub fn number(line: &str) -> anyhow::Result<u64> {
        line.split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no number in {line:?}"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Closing stdin asks it to exit; kill by pid in case it does not.
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
