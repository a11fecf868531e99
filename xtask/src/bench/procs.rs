//! Processes the bench starts: the load generators (run to completion, one
//! result line parsed), and long-running helpers (bpftrace, cwatch-floor,
//! node_exporter,
//! CLOSE_WAIT holders) that are killed by pid when their guard drops.
use std::{
    io::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use cwatch_testkit::churn::Churn;

use super::cleanup;

/// The workspace binaries the bench runs (release builds).
pub struct Bins {
    pub cwatch: PathBuf,
    pub churn: PathBuf,
    pub getppid: PathBuf,
    pub hold: PathBuf,
    pub load: PathBuf,
    /// Empty programs attached as cwatch's are (`cwatch-floor`).
    pub floor: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: &Path) -> Bins {
        Bins {
            cwatch: dir.join("cwatch"),
            churn: dir.join("cwatch-churn"),
            getppid: dir.join("cwatch-getppid"),
            hold: dir.join("cwatch-hold"),
            load: dir.join("cwatch-load"),
            floor: dir.join("cwatch-floor"),
        }
    }
}

/// One generator run: operations per second (wall clock) and the
/// generator's own CPU time per operation.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub rate: f64,
    pub cpu_ns: f64,
    /// Operations done: rate × seconds.
    pub ops: f64,
}

/// Runs a generator and reads the `secs S`, `rate R` and `cpu_ns C` of its
/// output line.
pub fn run_gen(bin: &Path, args: &[&str]) -> anyhow::Result<Run> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            bin.display(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |name: &str| -> anyhow::Result<f64> {
        let mut words = text.split_whitespace();
        while let Some(word) = words.next() {
            if word == name {
                return words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("bad {name} in {text:?}"));
            }
        }
        bail!("no {name} in {text:?}")
    };
    let rate = field("rate")?;
    Ok(Run {
        rate,
        ops: rate * field("secs")?,
        cpu_ns: field("cpu_ns")?,
    })
}

/// Runs `cwatch-churn` (`bin`) in `shape` for `secs` seconds.
pub fn churn(bin: &Path, shape: Churn, secs: f64) -> anyhow::Result<Run> {
    let args = shape.args(secs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_gen(bin, &args)
}

/// Wall time of `sh -c SCRIPT` with its output discarded, in milliseconds.
pub fn time_shell(script: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running `{script}`"))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        bail!("`{script}` failed ({status})");
    }
    Ok(ms)
}

/// A helper process, killed (by its pid) and reaped when dropped.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    what: String,
}

impl Helper {
    pub fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Helper> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        cleanup::track_pid(child.id());
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Helper {
            stdin: child.stdin.take(),
            child,
            lines: read_lines(stdout),
            what: what.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line on its stdin.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for an output line starting with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "{}: no `{prefix}` line within {timeout:?} (exit status: {status:?})",
                        self.what
                    )
                }
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
        cleanup::untrack_pid(self.child.id());
    }
}

fn read_lines(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `bpftrace -e PROGRAM`, returned once its probes are attached.
pub fn bpftrace(program: &str) -> anyhow::Result<Helper> {
    let mut helper = Helper::spawn(
        // Its stderr only says it could not raise RLIMIT_MEMLOCK (not needed
        // since Linux 5.11's memcg accounting of BPF memory).
        Command::new("bpftrace")
            .args(["-e", program])
            .stderr(Stdio::null()),
        &format!("bpftrace -e '{program}'"),
    )?;
    helper.expect("Attaching", Duration::from_secs(60))?;
    // The line is printed just before the attach calls; give them a moment.
    std::thread::sleep(Duration::from_millis(300));
    Ok(helper)
}

/// `cwatch-floor` (`bin`): empty programs on cwatch's two tracepoints,
/// attached through the raw tracepoint path cwatch's `tp_btf` programs
/// take; returned once both are attached.
pub fn floor(bin: &Path) -> anyhow::Result<Helper> {
    let mut helper = Helper::spawn(&mut Command::new(bin), "cwatch-floor")?;
    helper.expect("attached", Duration::from_secs(30))?;
    Ok(helper)
}

/// node_exporter with only the tcpstat collector, on 127.0.0.1:`port`.
pub fn node_exporter(port: u16) -> anyhow::Result<Helper> {
    let mut cmd = Command::new("prometheus-node-exporter");
    cmd.args([
        &format!("--web.listen-address=127.0.0.1:{port}"),
        "--collector.disable-defaults",
        "--collector.tcpstat",
    ])
    .stderr(Stdio::null());
    let helper = Helper::spawn(&mut cmd, "prometheus-node-exporter")?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&url).call().is_err() {
        if Instant::now() > deadline {
            bail!("node_exporter did not answer at {url} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(helper)
}
