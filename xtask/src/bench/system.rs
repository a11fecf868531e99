//! The machine under test: what it is (for the report), sysctls set for the
//! run and restored afterwards, and per-process figures read from /proc
//! (resident memory, CPU time, BPF program run statistics).
use std::{collections::BTreeMap, fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use super::cleanup;

/// A sysctl changed for the run; the old value is written back on drop (and
/// by [`cleanup`] if the run is interrupted or killed).
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// Sets `name` (dotted, e.g. `kernel.bpf_stats_enabled`) to `value`.
    pub fn set(name: &str, value: &str) -> anyhow::Result<Sysctl> {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        let old = fs::read_to_string(&path)
            .with_context(|| format!("reading sysctl {name}"))?
            .trim()
            .to_string();
        cleanup::track_sysctl(path.clone(), old.clone())?;
        let guard = Sysctl { path, old };
        fs::write(&guard.path, value).with_context(|| format!("setting sysctl {name}={value}"))?;
        eprintln!(
            "bench: sysctl {name}: {} -> {value} (restored at the end)",
            guard.old
        );
        Ok(guard)
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        match fs::write(&self.path, &self.old) {
            Ok(()) => cleanup::untrack_sysctl(&self.path),
            Err(e) => eprintln!("bench: cannot restore {}: {e}", self.path.display()),
        }
    }
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is there: bpftrace
/// attaches `tracepoint` programs through it, and a fresh host (or
/// container) may not have it mounted until something does. The mount is
/// left in place, as `cwatch run` itself leaves it. Returns whether it
/// mounted, for the report.
pub fn ensure_tracefs() -> anyhow::Result<bool> {
    let events = [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ];
    if events.iter().any(|p| std::path::Path::new(p).is_dir()) {
        return Ok(false);
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .context("running mount -t tracefs")?;
    if !status.success() || !std::path::Path::new(events[0]).is_dir() {
        anyhow::bail!(
            "tracefs is not mounted and `mount -t tracefs tracefs /sys/kernel/tracing` failed ({status}): \
             bpftrace, the bench's comparison, needs it"
        );
    }
    eprintln!("bench: mounted tracefs at /sys/kernel/tracing (left mounted, as cwatch run does)");
    Ok(true)
}

/// One line per fact: CPU, cores, memory, kernel, distribution.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let uname = |flag: &str| {
        Command::new("uname")
            .arg(flag)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    vec![
        ("CPU".into(), format!("{model} ({cores} CPUs)")),
        (
            "memory".into(),
            format!("{:.1} GiB", mem_kib as f64 / 1048576.0),
        ),
        ("kernel".into(), format!("{} {}", uname("-r"), uname("-v"))),
        ("OS".into(), os),
        ("load average at start".into(), load_average()),
    ]
}

/// /proc/loadavg's first three fields (other work on the shared machine).
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmRSS:")
}

/// The most resident memory `pid` had so far (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmHWM:")
}

/// The `/proc/PID/status` line `key` (in kB), in MiB.
fn status_mib(pid: u32, key: &str) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

/// User + system CPU seconds `pid` has used.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = stat.rsplit_once(')').context("bad /proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc/pid/stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok(ticks / hz)
}

/// Run statistics of one BPF program.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The BPF programs `pid` holds (program and link fds), by program id, with
/// their cumulative run statistics (non-zero only with bpf_stats enabled).
pub fn bpf_programs(pid: u32) -> anyhow::Result<BTreeMap<u32, ProgStats>> {
    let mut progs = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // Only program fds carry run_cnt; link fds name their prog_id.
        if let (Some(id), Some(run_cnt), Some(run_time_ns)) =
            (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
        {
            progs.insert(
                id as u32,
                ProgStats {
                    run_time_ns,
                    run_cnt,
                },
            );
        }
    }
    Ok(progs)
}

/// Program name from `bpftool prog show id ID --json` (15 characters at most,
/// as the kernel keeps it).
pub fn bpf_program_name(id: u32) -> String {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v.get("name")?.as_str().map(String::from))
        .unwrap_or_else(|| format!("id {id}"))
}
