//! What a run must undo however it ends. Guards undo their work when they
//! drop; this covers the ends where nothing drops: SIGINT, SIGTERM or
//! SIGHUP (a handler thread stops the processes the run started, by pid,
//! restores the sysctls it changed, removes the conntrack exemption and
//! exits 130), and a run killed outright
//! (every changed sysctl's old value is also written to a file under
//! target/, and the next run restores what a killed one left before it
//! starts).
use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    sync::{Mutex, MutexGuard},
};

use anyhow::Context as _;
use rustix::process::{Pid, Signal, kill_process};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::util;

#[derive(Default)]
struct Undo {
    /// Processes that would outlive the run (they do not read stdin).
    pids: Vec<u32>,
    /// (path under /proc/sys, value before the run).
    sysctls: Vec<(PathBuf, String)>,
}

static UNDO: Mutex<Undo> = Mutex::new(Undo {
    pids: Vec::new(),
    sysctls: Vec::new(),
});

fn undo() -> MutexGuard<'static, Undo> {
    UNDO.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the old values of changed sysctls wait while a run has them changed.
fn restore_file() -> PathBuf {
    util::target_dir().join("bench-sysctls.restore")
}

/// Restores what a killed run left behind, then installs the signal handler.
pub fn install() -> anyhow::Result<()> {
    crate::conntrack::remove();
    let file = restore_file();
    if let Ok(text) = fs::read_to_string(&file) {
        for line in text.lines() {
            if let Some((path, old)) = line.split_once('\t') {
                eprintln!("bench: a previous run was killed: restoring {path} to {old}");
                fs::write(path, old).with_context(|| format!("restoring {path}"))?;
            }
        }
        fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    }
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing the signal handler")?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("bench: signal {signal}: stopping what the run started");
            undo_all();
            std::process::exit(130);
        }
    });
    Ok(())
}

fn undo_all() {
    let mut u = undo();
    for pid in u.pids.drain(..) {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
    }
    for (path, old) in u.sysctls.drain(..).rev() {
        if let Err(e) = fs::write(&path, &old) {
            eprintln!("bench: cannot restore {}: {e}", path.display());
        }
    }
    let _ = fs::remove_file(restore_file());
    crate::conntrack::remove();
}

/// `pid` is stopped if the run is interrupted.
pub fn track_pid(pid: u32) {
    undo().pids.push(pid);
}

/// `pid` was stopped by its guard.
pub fn untrack_pid(pid: u32) {
    undo().pids.retain(|&p| p != pid);
}

/// The sysctl at `path` had `old` before the run changed it.
pub fn track_sysctl(path: PathBuf, old: String) -> anyhow::Result<()> {
    let mut u = undo();
    u.sysctls.push((path, old));
    save(&u)
}

/// The sysctl at `path` is restored.
pub fn untrack_sysctl(path: &PathBuf) {
    let mut u = undo();
    u.sysctls.retain(|(p, _)| p != path);
    let _ = save(&u);
}

fn save(u: &Undo) -> anyhow::Result<()> {
    let file = restore_file();
    if u.sysctls.is_empty() {
        let _ = fs::remove_file(&file);
        return Ok(());
    }
    let mut text = String::new();
    for (path, old) in &u.sysctls {
        let _ = writeln!(text, "{}\t{old}", path.display());
    }
    fs::write(&file, text).with_context(|| format!("writing {}", file.display()))
}
