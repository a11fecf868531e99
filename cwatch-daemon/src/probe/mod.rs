/*!
Probe loading: mounts what the kernel interfaces need, resolves struct
offsets from BTF, loads the embedded eBPF object with them, attaches every
program, and hands out the maps the rest of the daemon reads.

Dropping [`Probes`] detaches the programs and closes the maps. What is left
in the kernel after the daemon exits is only the pinned maps ([`pins`]), so
the next start keeps every socket's history.
*/
mod batch;
mod maps;
pub mod mounts;
mod nursery;
pub mod offsets;
pub mod pindir;
pub mod pins;
pub mod preflight;
mod rollback;
mod samples;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::BtfTracePoint,
};
use cwatch_common::{names, young_split};
pub use maps::{KernelCounters, KernelHistogram, Probes, ProgramStats};
use tracing::info;

/// The object built by build.rs from cwatch-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cwatch-ebpf"));

/// Programs attached by cwatch, by tracepoint name.
pub const PROGRAMS: &[&str] = &[names::PROG_SET_STATE, names::PROG_DESTROY];

/// How to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Where the long-lived maps are pinned; `None`: not pinned (they die
    /// with the daemon).
    pub pin_dir: Option<PathBuf>,
    /// Whether `pin_dir` was created for this start (by the claim): a failed
    /// start removes it again.
    pub pin_dir_created: bool,
    /// Size of the event ring buffer in bytes (a power of two, at least a
    /// page).
    pub ring_bytes: u32,
    /// Entries of `YOUNG`: how many sockets may be in CLOSE_WAIT for less
    /// than the grace at once.
    pub young_entries: u32,
    /// Entries of `SAMPLES`: connect-time stack samples held at once (at
    /// least 1; capture itself is switched by a control word).
    pub sample_entries: u32,
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux` unless the hidden
    /// `--kernel-btf` says otherwise).
    pub btf: PathBuf,
    /// aya-log's `AYA_LOG_LEVEL` for the programs (0: off; see
    /// `intake::kernel_log`): fixed at load.
    pub log_level: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetsError),
    #[error("reading kernel BTF for the loader")]
    Btf(#[source] aya::BtfError),
    #[error("loading the eBPF object (cwatch needs root, or CAP_BPF + CAP_PERFMON)")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF object has no {what} `{name}` (daemon and object out of step)")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error(
        "the kernel refused program `{name}` (tp_btf/{name}; it needs CONFIG_BPF_SYSCALL, \
         CONFIG_DEBUG_INFO_BTF and no seccomp, LSM or lockdown policy denying BPF)"
    )]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pin directory {dir}: {source}")]
    Pins {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Loads and attaches everything; returns the probes and the event ring
/// (for intake). Blocking (BTF parsing, verifier): call it from a blocking
/// task.
pub fn load(options: &LoadOptions) -> Result<(Probes, RingBuf<MapData>), ProbeError> {
    mounts::ensure_all();
    raise_memlock();
    let kernel_offsets = offsets::resolve(&offsets::read(&options.btf)?)?;
    let btf = Btf::parse_file(&options.btf, aya::Endianness::default()).map_err(ProbeError::Btf)?;
    // Nothing half-started: pins this start creates go again if it fails.
    let mut rollback =
        rollback::Rollback::before(options.pin_dir.as_deref(), options.pin_dir_created);
    let pin_paths = match &options.pin_dir {
        Some(dir) => {
            pins::prepare(dir, options.young_entries).map_err(|source| ProbeError::Pins {
                dir: dir.display().to_string(),
                source,
            })?
        }
        None => Vec::new(),
    };
    let (slots, overflow) = young_split(options.young_entries);
    let mask = u64::from(slots - 1);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global(names::GLOBAL_OFFSETS, &kernel_offsets, true)
        .override_global(aya_log::LEVEL, &options.log_level, false)
        .map_max_entries(names::MAP_EVENTS, options.ring_bytes)
        .override_global(names::GLOBAL_NURSERY_MASK, &mask, true)
        .map_max_entries(names::MAP_NURSERY, slots)
        .map_max_entries(names::MAP_YOUNG, overflow)
        .map_max_entries(names::MAP_SAMPLES, options.sample_entries.max(1));
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(ProbeError::Load)?;
    let mut layout: Array<MapData, u32> = take_map(&mut ebpf, names::MAP_LAYOUT)?;
    pins::stamp(&mut layout).map_err(|source| ProbeError::Map {
        name: names::MAP_LAYOUT,
        source,
    })?;
    for &name in PROGRAMS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or(ProbeError::Missing {
                what: "program",
                name,
            })?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })?;
        program
            .load(name, &btf)
            .and_then(|()| program.attach().map(drop))
            .map_err(|source| ProbeError::Program { name, source })?;
        info!(program = name, "attached tp_btf/{name}");
    }
    let maps = maps::Maps {
        counters: take_map(&mut ebpf, names::MAP_COUNTERS)?,
        nursery: take_nursery(&mut ebpf)?,
        young: take_map(&mut ebpf, names::MAP_YOUNG)?,
        close_wait: take_map(&mut ebpf, names::MAP_CLOSE_WAIT)?,
        linger: take_map(&mut ebpf, names::MAP_LINGER)?,
        listeners: take_map(&mut ebpf, names::MAP_LISTENERS)?,
        watched: take_map(&mut ebpf, names::MAP_WATCHED)?,
        control: take_map(&mut ebpf, names::MAP_CONTROL)?,
        hist: take_map(&mut ebpf, names::MAP_HIST)?,
        samples: take_map(&mut ebpf, names::MAP_SAMPLES)?,
    };
    let events = take_map(&mut ebpf, names::MAP_EVENTS)?;
    rollback.keep();
    Ok((Probes::new(ebpf, maps), events))
}

/// `NURSERY`, mapped into memory.
fn take_nursery(ebpf: &mut Ebpf) -> Result<nursery::Nursery, ProbeError> {
    let name = names::MAP_NURSERY;
    nursery::Nursery::map(take_map(ebpf, name)?).map_err(|io_error| ProbeError::Map {
        name,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "mmap",
            io_error,
        }),
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(ProbeError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones to the
/// cgroup. Lifting the limit is harmless either way.
fn raise_memlock() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    if let Err(err) = setrlimit(Resource::Memlock, unlimited) {
        tracing::debug!("could not lift RLIMIT_MEMLOCK: {err}");
    }
}
