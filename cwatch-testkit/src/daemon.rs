//! A real `cwatch run` process for a test: started on a free loopback port,
//! read through its HTTP endpoints, stopped with SIGTERM (SIGKILL if it does
//! not stop) by pid when dropped. Its log goes to a file the test can print.
use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::{prom::Scrape, wait_for, workspace_binary};

pub struct Daemon {
    child: Option<Child>,
    /// One keep-alive connection for all requests: every connection a test
    /// closed would itself pass through CLOSE_WAIT on the daemon's side and
    /// move the host-wide counters the tests compare.
    agent: ureq::Agent,
    pub addr: SocketAddr,
    pub pid: u32,
    log: PathBuf,
    /// The daemon's private pin directory (removed on drop), unless the test
    /// chose its own with `--pin-dir`.
    pub pin_dir: Option<PathBuf>,
}

/// A pin directory of this test process's own on bpffs, so tests running
/// next to a production cwatch (or to each other) never share maps.
pub fn private_pin_dir() -> PathBuf {
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!(
        "/sys/fs/bpf/cwatch-test-{}-{n}",
        std::process::id()
    ))
}

static STARTED: AtomicU32 = AtomicU32::new(0);

/// The `cwatch` binary under test (`CWATCH_BIN`, set by `cargo xtask test`).
pub fn cwatch_bin() -> anyhow::Result<PathBuf> {
    workspace_binary("CWATCH_BIN", "cwatch")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `setpriv` arguments that run a program as root with exactly the
/// capabilities named in `CWATCH_DAEMON_CAPS` (comma- or space-separated,
/// e.g. `CAP_BPF,CAP_PERFMON`); empty when it is unset.
pub fn caps_wrapper() -> Vec<String> {
    match std::env::var("CWATCH_DAEMON_CAPS") {
        Ok(list) if !list.trim().is_empty() => setpriv_exactly(
            &list
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
        ),
        _ => Vec::new(),
    }
}

/// `setpriv` arguments giving the program exactly `caps` (names like
/// `CAP_BPF`): for a root process the bounding set is what an exec grants,
/// and the inheritable and ambient sets are emptied.
pub fn setpriv_exactly(caps: &[&str]) -> Vec<String> {
    let mut bounding = String::from("-all");
    for cap in caps {
        let name = cap.trim().to_ascii_lowercase();
        bounding += ",+";
        bounding += name.strip_prefix("cap_").unwrap_or(&name);
    }
    [
        "setpriv",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        &format!("--bounding-set={bounding}"),
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Daemon {
    /// Starts `cwatch run --listen 127.0.0.1:<free> ARGS` and waits until
    /// /healthz says ready.
    pub fn start(args: &[&str]) -> anyhow::Result<Daemon> {
        let daemon = Self::spawn(args)?;
        daemon.wait_ready(Duration::from_secs(60))?;
        Ok(daemon)
    }

    /// Starts it without waiting.
    pub fn spawn(args: &[&str]) -> anyhow::Result<Daemon> {
        Self::spawn_wrapped(&[], args)
    }

    /// Starts `WRAPPER… cwatch run …` (e.g. under `unshare`) without waiting.
    /// The wrapper must exec cwatch, so that its pid is the daemon's.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str]) -> anyhow::Result<Daemon> {
        Self::spawn_full(wrapper, &[], args)
    }

    /// Starts `WRAPPER… cwatch run …` with extra environment variables,
    /// without waiting.
    ///
    /// With `CWATCH_DAEMON_CAPS` set (`cargo xtask test` sets it to the
    /// systemd unit's capability set), the daemon runs under `setpriv` with
    /// exactly those capabilities, outside any other wrapper — unless the
    /// wrapper is itself a `setpriv`.
    pub fn spawn_full(
        wrapper: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Daemon> {
        Self::spawn_bin(&cwatch_bin()?, wrapper, env, args)
    }

    /// As [`Daemon::spawn_full`], with `bin` as the `cwatch` binary (a copy
    /// another user can execute, say).
    pub fn spawn_bin(
        bin: &std::path::Path,
        wrapper: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Daemon> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("cwatch-test-{}-{n}.log", std::process::id()));
        let log_file = File::create(&log)?;
        let pin_dir = (!args.contains(&"--pin-dir")).then(private_pin_dir);
        let pin_args: Vec<String> = match &pin_dir {
            Some(dir) => vec!["--pin-dir".into(), dir.display().to_string()],
            None => Vec::new(),
        };
        // A test that runs the daemon under its own setpriv chooses its
        // capabilities itself (setpriv cannot shrink a bounding set from
        // inside another one without CAP_SETPCAP).
        let mut full: Vec<String> = match wrapper.first() {
            Some(&"setpriv") => Vec::new(),
            _ => caps_wrapper(),
        };
        full.extend(wrapper.iter().map(|s| s.to_string()));
        let mut cmd = match full.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("run")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .args(&pin_args)
            .env("RUST_LOG", "info,cwatch_daemon=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting cwatch")?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .max_idle_connections_per_host(1)
            .max_idle_age(Duration::from_secs(24 * 3600))
            .build()
            .into();
        Ok(Daemon {
            pid: child.id(),
            child: Some(child),
            agent,
            addr,
            log,
            pin_dir,
        })
    }

    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for("cwatch /healthz = 200", timeout, || {
            match self.get("/healthz") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .with_context(|| format!("daemon log:\n{}", self.log()))
    }

    /// GET `path`; returns the status and body whatever the status.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut response = self
            .agent
            .get(&format!("http://{}{path}", self.addr))
            .call()?;
        let status = response.status().as_u16();
        // No size limit: ureq's default (10 MiB) is ~40k sockets of JSON, and
        // the host may hold that many of other tests' sockets.
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()?;
        Ok((status, body))
    }

    /// POST `body` (JSON text) to `path`; returns the status and body.
    pub fn post(&self, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let mut response = self
            .agent
            .post(&format!("http://{}{path}", self.addr))
            .header("Content-Type", "application/json")
            .send(body)?;
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_to_string()?))
    }

    pub fn metrics(&self) -> anyhow::Result<Scrape> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Scrape::parse(&body)
    }

    pub fn sockets(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (status, body) = self.get("/api/v1/sockets")?;
        if status != 200 {
            bail!("/api/v1/sockets answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = Pid::from_raw(self.pid as i32).context("pid 0")?;
        kill_process(pid, signal)?;
        Ok(())
    }

    /// SIGTERM, then waits (SIGKILL after 20 s) and returns the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.stop_inner()
    }

    /// Waits for the process to exit by itself; returns its status and
    /// everything it logged.
    pub fn wait_exit_keeping_log(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<(ExitStatus, String)> {
        let status = self.wait_inner(timeout)?;
        Ok((status, self.log()))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.wait_inner(timeout)
    }

    fn wait_inner(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("already stopped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "cwatch did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_inner(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let _ = self.signal(Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait()?;
        bail!("cwatch ignored SIGTERM for 20 s and was killed ({status})")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_inner();
        }
        let _ = std::fs::remove_file(&self.log);
        if let Some(dir) = &self.pin_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
