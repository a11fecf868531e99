//! Shared by the deploy tests: serialisation and preflight, the repository's
//! files, temporary directories, the external tools (installed by `cargo
//! xtask setup`; a missing one fails the test, never skips it).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Call first in every test: root check, one test at a time (they start
/// daemons that see every socket of the host).
pub fn serial() -> MutexGuard<'static, ()> {
    assert!(
        rustix::process::geteuid().is_root(),
        "the deploy tests need root; run them with `cargo xtask test`"
    );
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file of this repository, e.g. `deploy/systemd/cwatch.service`.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

pub fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The path of `tool`, or a failure saying how to get it.
pub fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed: run `cargo xtask setup` (as root it installs it)")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd`, returning its output whatever the exit status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and fails the test with its output unless it succeeds;
/// returns stdout + stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("cwatch-deploy-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The capability names of a mask, as `CAP_BPF` etc.
pub fn cap_names(caps: &[cwatch_daemon::daemon::caps::Capability]) -> Vec<String> {
    cwatch_daemon::daemon::caps::names(cwatch_daemon::daemon::caps::mask(caps))
}
