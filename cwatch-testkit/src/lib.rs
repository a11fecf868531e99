/*!
Support for cwatch's kernel tests and benchmarks: start a real daemon and read
its endpoints ([`daemon`]), parse the Prometheus text format ([`prom`]), read
ground truth from `ss` ([`ss`]), drive `cwatch-load` workload processes
([`load`]) and `cwatch-churn` in its shapes ([`churn`]), run them as other
users ([`user`]), and run a soak ([`soak`]). Everything started here is
stopped by pid when dropped.
*/
pub mod churn;
pub mod daemon;
pub mod load;
pub mod prom;
pub mod soak;
pub mod ss;
pub mod user;

use std::time::{Duration, Instant};

/// CLOCK_BOOTTIME, the clock cwatch's ages use, in nanoseconds.
pub fn boottime_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after
/// `timeout` with the last observation in the message.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A binary of this workspace: `$ENV` if set, else next to the running test
/// executable's `target/<profile>/` directory.
pub fn workspace_binary(env: &str, name: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name));
    match candidate {
        Some(path) if path.is_file() => Ok(path),
        _ => anyhow::bail!(
            "cannot find the `{name}` binary: set {env}, or run the kernel tests with `cargo xtask test`"
        ),
    }
}
