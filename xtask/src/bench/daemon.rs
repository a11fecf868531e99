//! The cwatch daemon as the bench runs it: the release binary, production
//! logging (info), on a free loopback port, read with one keep-alive HTTP
//! connection (a closed connection would itself pass through CLOSE_WAIT),
//! maps not pinned, stopped by pid with SIGTERM (SIGKILL after 20 s) when dropped.
use std::{
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal, kill_process};

use super::{cleanup, cpu::CpuMeter};

pub struct BenchDaemon {
    child: Option<Child>,
    agent: ureq::Agent,
    pub addr: String,
    pub pid: u32,
    /// From spawn to /healthz answering 200 (probes attached, first
    /// reconciliation done).
    pub ready_after: Duration,
}

impl BenchDaemon {
    /// Starts `cwatch run --listen 127.0.0.1:<free> ARGS` and waits for ready.
    pub fn start(bin: &Path, args: &[&str]) -> anyhow::Result<BenchDaemon> {
        let port = cwatch_testkit::daemon::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("cwatch-bench-{}-{n}.log", std::process::id()));
        let log_file = File::create(&log)?;
        let started = Instant::now();
        let child = Command::new(bin)
            // No pinned maps: every start is a cold start (reconciliation
            // from scratch), and no two daemons share state.
            .args(["run", "--listen", &addr, "--pin-dir", "none"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .max_idle_connections_per_host(1)
            .max_idle_age(Duration::from_secs(24 * 3600))
            .build()
            .into();
        cleanup::track_pid(child.id());
        let mut daemon = BenchDaemon {
            pid: child.id(),
            child: Some(child),
            agent,
            addr,
            ready_after: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(600);
        loop {
            if let Ok((200, _)) = daemon.get("/healthz") {
                break;
            }
            if let Some(child) = daemon.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("cwatch exited ({status}) before ready:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("cwatch not ready within 600 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        daemon.ready_after = started.elapsed();
        Ok(daemon)
    }

    /// Waits (at most 15 s) until the daemon is quiet: under 1 % of a core
    /// over a quarter of a second (the start-up reconciliation and the walk
    /// of /proc it asked for are over).
    pub fn settle(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let window = Duration::from_millis(250);
        while Instant::now() < deadline {
            let mut cpu = CpuMeter::start(self.pid)?;
            std::thread::sleep(window);
            cpu.sample()?;
            if (cpu.used_ns() as f64) < window.as_nanos() as f64 * 0.01 {
                return Ok(());
            }
        }
        eprintln!("bench: the daemon was still busy 15 s after ready");
        Ok(())
    }

    /// GET `path`: status and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut response = self
            .agent
            .get(&format!("http://{}{path}", self.addr))
            .call()?;
        let status = response.status().as_u16();
        // No size limit: ureq's default (10 MiB) is about 40k sockets of JSON.
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()?;
        Ok((status, body))
    }

    /// GET /metrics, failing on anything but 200.
    pub fn metrics(&self) -> anyhow::Result<String> {
        match self.get("/metrics")? {
            (200, body) => Ok(body),
            (code, body) => bail!("/metrics answered {code}: {body}"),
        }
    }

    /// SIGTERM, wait (SIGKILL after 20 s).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        // Signalled: an interrupted run has nothing more to do for it.
        cleanup::untrack_pid(self.pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("cwatch ignored SIGTERM for 20 s and was killed")
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
