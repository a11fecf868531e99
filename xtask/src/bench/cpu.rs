//! A process's CPU time to the nanosecond, for windows where /proc/PID/stat's
//! clock ticks (10 ms each) are too coarse: a quiet daemon uses a few ms a
//! minute. The sum over its threads of the time on CPU in
//! /proc/PID/task/TID/schedstat, sampled often enough that a thread which
//! comes and goes (tokio's blocking pool keeps idle threads for 10 s) is
//! counted up to its last sample. Reading another process's /proc costs the
//! reader, not the process read.
use std::{collections::HashMap, fs};

use anyhow::Context as _;

/// CPU time used by one process since [`CpuMeter::start`].
pub struct CpuMeter {
    pid: u32,
    /// Per thread: (time on CPU at start, or 0 for a thread born later; the
    /// latest sample).
    threads: HashMap<u32, (u64, u64)>,
}

impl CpuMeter {
    pub fn start(pid: u32) -> anyhow::Result<CpuMeter> {
        let threads = read_threads(pid)?
            .into_iter()
            .map(|(tid, ns)| (tid, (ns, ns)))
            .collect();
        Ok(CpuMeter { pid, threads })
    }

    /// Reads every thread again.
    pub fn sample(&mut self) -> anyhow::Result<()> {
        for (tid, ns) in read_threads(self.pid)? {
            self.threads.entry(tid).or_insert((0, 0)).1 = ns;
        }
        Ok(())
    }

    /// Nanoseconds on CPU since the start, up to the last sample.
    pub fn used_ns(&self) -> u64 {
        self.threads
            .values()
            .map(|(first, last)| last.saturating_sub(*first))
            .sum()
    }
}

/// (tid, ns on CPU) of every thread of `pid`.
fn read_threads(pid: u32) -> anyhow::Result<Vec<(u32, u64)>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        if let Ok(text) = fs::read_to_string(entry.path().join("schedstat"))
            && let Some(ns) = parse_schedstat(&text)
        {
            out.push((tid, ns));
        }
    }
    Ok(out)
}

/// The first field of a schedstat line: nanoseconds on CPU.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_first_field() {
        assert_eq!(parse_schedstat("175768605 12021311 414\n"), Some(175768605));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn threads_born_later_count_whole() {
        let mut m = CpuMeter {
            pid: 0,
            threads: HashMap::from([(1, (100, 100)), (2, (50, 50))]),
        };
        m.threads.get_mut(&1).unwrap().1 = 130;
        m.threads.insert(3, (0, 7));
        assert_eq!(m.used_ns(), 37);
        let mut own = CpuMeter::start(std::process::id()).unwrap();
        own.sample().unwrap();
        assert!(own.threads.contains_key(&std::process::id()));
    }
}
