/*!
The loaded probes and every operation on their maps: the kernel's counters
and duration histogram, `YOUNG` read whole and its sockets reported into
`CLOSE_WAIT`, the `CLOSE_WAIT` and `LINGER` maps read whole (in batches) or
corrected entry by entry, the listener of a port, the control words, the
watch list, and what the kernel says each program costs.

Reads of the per-CPU arrays and of the programs' statistics need no lock;
the maps that are written are behind a mutex each, held only for the bpf()
calls on them.
*/
use std::{collections::HashMap as StdHashMap, io, sync::Mutex};

use aya::{
    maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray},
    sys::SyscallError,
};
use cwatch_common::{
    Event, Listener, ListenerKey, SockRecord, StackSample, control, counter, hist, names,
};

use super::{PROGRAMS, ProbeError, batch, nursery::Nursery};

/// Kernel counter totals, indexed by `cwatch_common::counter`.
pub type KernelCounters = [u64; counter::LEN as usize];

/// The kernel's duration histogram summed over CPUs, indexed by
/// `cwatch_common::hist` (buckets, +Inf, sum of ns).
pub type KernelHistogram = [u64; hist::LEN as usize];

/// What the kernel says about one of our programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub run_time: std::time::Duration,
    pub run_count: u64,
}

/// The maps as the loader hands them over.
pub(super) struct Maps {
    pub counters: PerCpuArray<MapData, u64>,
    pub nursery: Nursery,
    pub young: HashMap<MapData, u64, SockRecord>,
    pub close_wait: HashMap<MapData, u64, SockRecord>,
    pub linger: HashMap<MapData, u64, Event>,
    pub listeners: HashMap<MapData, ListenerKey, Listener>,
    pub watched: Array<MapData, u64>,
    pub control: Array<MapData, u32>,
    pub hist: PerCpuArray<MapData, u64>,
    pub samples: HashMap<MapData, u64, StackSample>,
}

/// The loaded, attached programs and the maps userspace reads. Dropping it
/// detaches the programs and closes the maps (the pins stay).
pub struct Probes {
    /// Owns the programs and their links.
    ebpf: aya::Ebpf,
    counters: PerCpuArray<MapData, u64>,
    hist: PerCpuArray<MapData, u64>,
    nursery: Nursery,
    young: Mutex<HashMap<MapData, u64, SockRecord>>,
    close_wait: Mutex<HashMap<MapData, u64, SockRecord>>,
    close_wait_capacity: u32,
    linger: Mutex<HashMap<MapData, u64, Event>>,
    listeners: HashMap<MapData, ListenerKey, Listener>,
    watched: Mutex<Array<MapData, u64>>,
    control: Mutex<Array<MapData, u32>>,
    /// Connect-time stack samples (`super::samples`).
    pub(super) samples: Mutex<HashMap<MapData, u64, StackSample>>,
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// Per-CPU slots `0..N` of `map`, each summed over CPUs.
fn per_cpu_totals<const N: usize>(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
) -> Result<[u64; N], ProbeError> {
    let mut totals = [0u64; N];
    for (index, total) in totals.iter_mut().enumerate() {
        let values = map.get(&(index as u32), 0).map_err(map_error(name))?;
        *total = values.iter().sum();
    }
    Ok(totals)
}

impl Probes {
    pub(super) fn new(ebpf: aya::Ebpf, maps: Maps) -> Self {
        let close_wait_capacity = maps.close_wait.map().info().map_or(0, |i| i.max_entries());
        Self {
            ebpf,
            counters: maps.counters,
            hist: maps.hist,
            nursery: maps.nursery,
            young: Mutex::new(maps.young),
            close_wait: Mutex::new(maps.close_wait),
            close_wait_capacity,
            linger: Mutex::new(maps.linger),
            listeners: maps.listeners,
            watched: Mutex::new(maps.watched),
            control: Mutex::new(maps.control),
            samples: Mutex::new(maps.samples),
        }
    }

    /// Sums of the per-CPU kernel counters, indexed by `cwatch_common::counter`.
    pub fn counter_totals(&self) -> Result<KernelCounters, ProbeError> {
        per_cpu_totals(&self.counters, names::MAP_COUNTERS)
    }

    /// The duration histogram, summed over CPUs.
    pub fn histogram(&self) -> Result<KernelHistogram, ProbeError> {
        per_cpu_totals(&self.hist, names::MAP_HIST)
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

    /// The kernel's id of the attached program `name` (aya-log finds the
    /// programs' log ring through it).
    pub fn program_id(&self, name: &str) -> Option<u32> {
        Some(self.ebpf.program(name)?.info().ok()?.id())
    }

    /// Capacity of the `CLOSE_WAIT` map.
    pub fn close_wait_capacity(&self) -> u32 {
        self.close_wait_capacity
    }

    /// Every young record (`NURSERY`'s slots and `YOUNG`): sockets in
    /// CLOSE_WAIT not reported yet.
    pub fn young_snapshot(&self) -> io::Result<StdHashMap<u64, SockRecord>> {
        let mut young = snapshot(&self.young.lock().unwrap_or_else(|e| e.into_inner()))?;
        young.extend(self.nursery.records().into_iter().map(|r| (r.cookie, r)));
        Ok(young)
    }

    /// Takes `cookie`'s young record from wherever it is (its slot, else
    /// `YOUNG`); `false` when neither holds it any more.
    fn take_young(&self, cookie: u64) -> bool {
        self.nursery.take(cookie)
            || self
                .young
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&cookie)
                .is_ok()
    }

    /// Reports `rec` (a socket that stayed in CLOSE_WAIT past the grace):
    /// moves its record from `YOUNG` to `CLOSE_WAIT`. `false` when it left
    /// CLOSE_WAIT meanwhile (the kernel deleted it from `YOUNG` first): then
    /// nothing of it is left behind.
    pub fn report(&self, rec: &SockRecord) -> Result<bool, ProbeError> {
        let mut close_wait = self.close_wait.lock().unwrap_or_else(|e| e.into_inner());
        close_wait
            .insert(rec.cookie, *rec, 0)
            .map_err(map_error(names::MAP_CLOSE_WAIT))?;
        let moved = self.take_young(rec.cookie);
        if !moved {
            // It left between our read and now; the kernel took its young
            // record and did not look in `CLOSE_WAIT`.
            let _ = close_wait.remove(&rec.cookie);
        }
        Ok(moved)
    }

    /// Every record of the `CLOSE_WAIT` map.
    pub fn close_wait_snapshot(&self) -> io::Result<StdHashMap<u64, SockRecord>> {
        snapshot(&self.close_wait.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Of `cookies`, those no longer in the `CLOSE_WAIT` map (the kernel
    /// deletes a record when its socket leaves CLOSE_WAIT).
    pub fn gone_from_close_wait(&self, cookies: &[u64]) -> Vec<u64> {
        let map = self.close_wait.lock().unwrap_or_else(|e| e.into_inner());
        cookies
            .iter()
            .copied()
            .filter(|cookie| map.get(cookie, 0).is_err())
            .collect()
    }

    /// Every record of the `LINGER` map (sockets that left CLOSE_WAIT and
    /// are not destroyed yet).
    pub fn linger_snapshot(&self) -> io::Result<StdHashMap<u64, Event>> {
        snapshot(&self.linger.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Inserts `add` into the `CLOSE_WAIT` map and deletes `remove`.
    pub fn update_close_wait(&self, add: &[SockRecord], remove: &[u64]) -> Result<(), ProbeError> {
        let mut map = self.close_wait.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<u64> = add.iter().map(|r| r.cookie).collect();
        let mut written = 0;
        match batch::write_all(map.map(), &keys, add) {
            Ok(()) => written = add.len(),
            Err((done, e)) if no_batch(&e) && done == 0 => {
                tracing::debug!("no batch map update ({e}): writing entry by entry");
            }
            Err((_, io_error)) => {
                return Err(ProbeError::Map {
                    name: names::MAP_CLOSE_WAIT,
                    source: MapError::SyscallError(SyscallError {
                        call: "bpf_map_update_batch",
                        io_error,
                    }),
                });
            }
        }
        for rec in &add[written..] {
            map.insert(rec.cookie, *rec, 0)
                .map_err(map_error(names::MAP_CLOSE_WAIT))?;
        }
        // Gone already (the kernel raced us) is fine.
        if batch::delete_all(map.map(), remove).is_err() {
            for cookie in remove {
                let _ = map.remove(cookie);
            }
        }
        Ok(())
    }

    /// Deletes the young records of `cookies`.
    pub fn forget_young(&self, cookies: &[u64]) {
        for &cookie in cookies {
            self.take_young(cookie);
        }
    }

    /// Deletes `cookies` from the `LINGER` map.
    pub fn forget_linger(&self, cookies: &[u64]) {
        let mut map = self.linger.lock().unwrap_or_else(|e| e.into_inner());
        for cookie in cookies {
            let _ = map.remove(cookie);
        }
    }

    /// Who listens on `port` in network namespace `netns`, if the kernel saw
    /// it call listen().
    pub fn listener(&self, netns: u32, port: u16) -> Option<Listener> {
        let key = ListenerKey {
            netns,
            port,
            _pad: 0,
        };
        self.listeners.get(&key, 0).ok()
    }

    /// Control word `index` (`cwatch_common::control`).
    pub fn control(&self, index: u32) -> Result<u32, ProbeError> {
        let control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        control
            .get(&index, 0)
            .map_err(map_error(names::MAP_CONTROL))
    }

    /// Sets control word `index`.
    pub fn set_control(&self, index: u32, value: u32) -> Result<(), ProbeError> {
        debug_assert!(index < control::LEN);
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        control
            .set(index, value, 0)
            .map_err(map_error(names::MAP_CONTROL))
    }

    /// Writes words of the watch list's bitmap: (word index, word).
    pub fn set_watched(&self, words: &[(u32, u64)]) -> Result<(), ProbeError> {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for &(index, word) in words {
            watched
                .set(index, word, 0)
                .map_err(map_error(names::MAP_WATCHED))?;
        }
        Ok(())
    }
}

/// The kernel's internal "operation not supported", which bpf() returns for
/// a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// Whether `e` says the kernel has no batch operations on the map (before
/// 5.6).
fn no_batch(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
    )
}

/// Every entry of `map`: in batches, or one by one where the kernel has no
/// batch lookup (before 5.6).
fn snapshot<V: aya::Pod>(map: &HashMap<MapData, u64, V>) -> io::Result<StdHashMap<u64, V>> {
    match batch::read_all(map.map()) {
        Err(e) if no_batch(&e) => {
            tracing::debug!("no batch map lookup ({e}): reading entry by entry");
            map.iter().map(|r| r.map_err(io::Error::other)).collect()
        }
        other => other,
    }
}
