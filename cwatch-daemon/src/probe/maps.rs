/*!
The loaded probes and every operation on their maps: the kernel's counters,
the `CLOSE_WAIT` and `LINGER` maps read whole (in batches) or corrected
entry by entry, and what the kernel says each program costs.

Reads of the counters and of the programs' statistics need no lock; the two
hash maps are behind a mutex each, held only for the bpf() calls on them.
*/
use std::{collections::HashMap as StdHashMap, io, sync::Mutex};

use aya::{
    Ebpf,
    maps::{HashMap, IterableMap as _, MapData, PerCpuArray},
};
use cwatch_common::{Event, SockRecord, counter, names};

use super::{PROGRAMS, ProbeError, batch};

/// Kernel counter totals, indexed by `cwatch_common::counter`.
pub type KernelCounters = [u64; counter::LEN as usize];

/// What the kernel says about one of our programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub run_time: std::time::Duration,
    pub run_count: u64,
}

/// The loaded, attached programs and the maps userspace reads. Dropping it
/// detaches the programs and closes the maps (the pins stay).
pub struct Probes {
    /// Owns the programs and their links.
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    close_wait: Mutex<HashMap<MapData, u64, SockRecord>>,
    close_wait_capacity: u32,
    linger: Mutex<HashMap<MapData, u64, Event>>,
}

impl Probes {
    pub(super) fn new(
        ebpf: Ebpf,
        counters: PerCpuArray<MapData, u64>,
        close_wait: HashMap<MapData, u64, SockRecord>,
        linger: HashMap<MapData, u64, Event>,
    ) -> Self {
        let close_wait_capacity = close_wait.map().info().map_or(0, |i| i.max_entries());
        Self {
            ebpf,
            counters,
            close_wait: Mutex::new(close_wait),
            close_wait_capacity,
            linger: Mutex::new(linger),
        }
    }

    /// Sums of the per-CPU kernel counters, indexed by `cwatch_common::counter`.
    pub fn counter_totals(&self) -> Result<KernelCounters, ProbeError> {
        let mut totals = [0u64; counter::LEN as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            let values =
                self.counters
                    .get(&(index as u32), 0)
                    .map_err(|source| ProbeError::Map {
                        name: names::MAP_COUNTERS,
                        source,
                    })?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    /// Run time and run count of each attached program, as the kernel
    /// reports them (both stay 0 unless kernel.bpf_stats_enabled is 1).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        PROGRAMS
            .iter()
            .filter_map(|&name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name: name.to_string(),
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }

    /// Capacity of the `CLOSE_WAIT` map.
    pub fn close_wait_capacity(&self) -> u32 {
        self.close_wait_capacity
    }

    /// Every record of the `CLOSE_WAIT` map.
    pub fn close_wait_snapshot(&self) -> io::Result<StdHashMap<u64, SockRecord>> {
        snapshot(&self.close_wait.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every record of the `LINGER` map (sockets that left CLOSE_WAIT and
    /// are not destroyed yet).
    pub fn linger_snapshot(&self) -> io::Result<StdHashMap<u64, Event>> {
        snapshot(&self.linger.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Inserts `add` into the `CLOSE_WAIT` map and deletes `remove`.
    pub fn update_close_wait(&self, add: &[SockRecord], remove: &[u64]) -> Result<(), ProbeError> {
        let mut map = self.close_wait.lock().unwrap_or_else(|e| e.into_inner());
        for rec in add {
            map.insert(rec.cookie, *rec, 0)
                .map_err(|source| ProbeError::Map {
                    name: names::MAP_CLOSE_WAIT,
                    source,
                })?;
        }
        for cookie in remove {
            // Gone already (the kernel raced us) is fine.
            let _ = map.remove(cookie);
        }
        Ok(())
    }

    /// Deletes `cookies` from the `LINGER` map.
    pub fn forget_linger(&self, cookies: &[u64]) {
        let mut map = self.linger.lock().unwrap_or_else(|e| e.into_inner());
        for cookie in cookies {
            let _ = map.remove(cookie);
        }
    }
}

/// The kernel's internal "operation not supported", which bpf() returns for
/// a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// Every entry of `map`: in batches, or one by one where the kernel has no
/// batch lookup (before 5.6).
fn snapshot<V: aya::Pod>(map: &HashMap<MapData, u64, V>) -> io::Result<StdHashMap<u64, V>> {
    match batch::read_all(map.map()) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
            ) =>
        {
            tracing::debug!("no batch map lookup ({e}): reading entry by entry");
            map.iter().map(|r| r.map_err(io::Error::other)).collect()
        }
        other => other,
    }
}
