/*!
The engine: [`Stacks`] owns the caches (binaries by device/inode with their
unwind data, open file and symbolizer; processes with their placed
mappings) and turns samples into [`Trace`]s and traces into [`Stack`]s.
*/
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use framehop::x86_64::CacheX86_64;

use crate::{
    Error,
    cache::Lru,
    maps::ProcFs,
    module::{Elf, FileKey, ModuleInfo},
    sample::{End, Sample, Trace},
    site::is_runtime_module,
    symbolize::{Frame, ModuleSymbolizer, Named, Stack, is_root},
    unwind::Process,
};

/// Limits and where to look. The defaults bound the caches to 128 open
/// binaries and 64 MiB (unwind data plus estimated symbolizer memory),
/// 1024 processes, 128 frames per stack.
#[derive(Clone, Debug)]
pub struct Config {
    pub proc: ProcFs,
    pub max_frames: usize,
    /// Binaries kept open (each holds one file descriptor).
    pub max_modules: usize,
    /// Bytes of unwind data and estimated symbolizer memory kept.
    pub max_bytes: usize,
    pub max_processes: usize,
    /// How long a process's mappings are trusted before they are read again
    /// (an instruction pointer outside them also forces a read).
    pub maps_ttl: Duration,
    /// Open binaries through `/proc/<pid>/map_files/` (needs CAP_SYS_ADMIN
    /// or CAP_CHECKPOINT_RESTORE); without it, or when it fails,
    /// `/proc/<pid>/root/<path>` checked against the mapped inode.
    pub map_files: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            proc: ProcFs::default(),
            max_frames: 128,
            max_modules: 128,
            max_bytes: 64 << 20,
            max_processes: 1024,
            maps_ttl: Duration::from_secs(2),
            map_files: true,
        }
    }
}

/// Counters and sizes of the caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub modules: usize,
    /// Bytes charged to the module cache (bounded by `max_bytes`).
    pub module_bytes: usize,
    pub processes: usize,
    pub maps_reads: u64,
    pub module_loads: u64,
    pub module_failures: u64,
    pub module_evictions: u64,
    pub symbolizers: u64,
}

struct ModuleEntry {
    elf: Option<Arc<Elf>>,
    symbolizer: Option<ModuleSymbolizer>,
}

struct ProcEntry {
    process: Process,
    read_at: Instant,
}

/// Unwinds and symbolizes connect-time stacks. Neither `Send` nor `Sync`
/// (blazesym's symbolizer is not): create it on the thread that uses it,
/// or use [`Worker`](crate::Worker), which owns one on its own thread.
pub struct Stacks {
    cfg: Config,
    modules: Lru<FileKey, ModuleEntry>,
    processes: Lru<u32, ProcEntry>,
    rules: CacheX86_64,
    stats: Stats,
}

impl Stacks {
    pub fn new(cfg: Config) -> Self {
        Self {
            modules: Lru::new(cfg.max_modules, cfg.max_bytes),
            processes: Lru::new(cfg.max_processes, usize::MAX),
            rules: CacheX86_64::new(),
            stats: Stats::default(),
            cfg,
        }
    }

    /// Unwinds one sample. Reads the process's mappings (cached for
    /// `maps_ttl`) and opens its binaries (cached); fails only when the
    /// process's mappings cannot be read (it exited).
    pub fn unwind(&mut self, sample: &Sample) -> Result<Trace, Error> {
        let now = Instant::now();
        let fresh = self.processes.get_mut(&sample.pid).is_some_and(|p| {
            now.duration_since(p.read_at) < self.cfg.maps_ttl && p.process.is_code(sample.regs.ip)
        });
        if !fresh {
            self.load_process(sample.pid, now)?;
        }
        let Some(p) = self.processes.get_mut(&sample.pid) else {
            return Err(Error::Module {
                path: self.cfg.proc.root().join(sample.pid.to_string()),
                what: "process left the cache while being loaded".into(),
            });
        };
        Ok(p.process
            .unwind(sample, &mut self.rules, self.cfg.max_frames))
    }

    /// Drops what is cached for a process (call when it exits; a reused pid
    /// is otherwise caught by `maps_ttl`).
    pub fn forget_process(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    fn load_process(&mut self, pid: u32, now: Instant) -> Result<(), Error> {
        self.processes.remove(&pid);
        let maps = self.cfg.proc.maps(pid)?;
        self.stats.maps_reads += 1;
        let mut execs = Vec::new();
        for m in maps.into_iter().filter(|m| m.exec) {
            let elf = match m.file_path() {
                Some(_) => self.module(pid, &m),
                None => None,
            };
            execs.push((m, elf));
        }
        let process = Process::new(execs);
        self.processes.insert(
            pid,
            ProcEntry {
                process,
                read_at: now,
            },
            0,
        );
        Ok(())
    }

    /// The cached binary of mapping `m`, opened on first use.
    fn module(&mut self, pid: u32, m: &crate::maps::Mapping) -> Option<Arc<Elf>> {
        let key = FileKey::of(m);
        if let Some(entry) = self.modules.get_mut(&key) {
            return entry.elf.clone();
        }
        let elf = match Elf::open(&self.cfg.proc, pid, m, self.cfg.map_files) {
            Ok(elf) => Some(Arc::new(elf)),
            Err(_) => {
                self.stats.module_failures += 1;
                None
            }
        };
        self.stats.module_loads += u64::from(elf.is_some());
        self.insert_module(key, elf.clone());
        elf
    }

    fn insert_module(&mut self, key: FileKey, elf: Option<Arc<Elf>>) {
        let cost = elf
            .as_ref()
            .map_or(64, |e| e.cost() + e.symbolizer_estimate);
        let entry = ModuleEntry {
            elf,
            symbolizer: None,
        };
        let evicted = self.modules.insert(key, entry, cost);
        if !evicted.is_empty() {
            self.stats.module_evictions += evicted.len() as u64;
            // Processes hold their binaries: let them go too, so the bound holds.
            self.processes.retain(|_, p| {
                !p.process
                    .placed
                    .iter()
                    .any(|pl| evicted.iter().any(|(k, _)| *k == pl.elf.info.key))
            });
        }
    }

    /// Names at `svma` in the binary `info`, opening it again if evicted.
    fn names(&mut self, info: &ModuleInfo, svma: u64) -> Vec<Named> {
        let current = self
            .modules
            .get_mut(&info.key)
            .is_some_and(|e| e.elf.as_ref().is_some_and(|elf| *elf.info == *info));
        if !current {
            let Some(elf) = Elf::reopen(&self.cfg.proc, info, self.cfg.map_files) else {
                return Vec::new();
            };
            self.insert_module(info.key, Some(Arc::new(elf)));
        }
        let Some(entry) = self.modules.get_mut(&info.key) else {
            return Vec::new();
        };
        let Some(elf) = &entry.elf else {
            return Vec::new();
        };
        let symbolizer = entry.symbolizer.get_or_insert_with(|| {
            self.stats.symbolizers += 1;
            let runtime = is_runtime_module(&elf.info.path.to_string_lossy());
            ModuleSymbolizer::new(&elf.file, !runtime)
        });
        symbolizer.lookup(svma)
    }

    /// Symbolizes a trace (lazily: call it when the stack is wanted).
    pub fn symbolize(&mut self, trace: &Trace) -> Stack {
        let mut frames = Vec::with_capacity(trace.frames.len());
        let mut root = false;
        for raw in &trace.frames {
            let names = match &raw.module {
                Some(info) => self.names(info, raw.svma),
                None => Vec::new(),
            };
            let at_root = names.last().is_some_and(|n| is_root(&n.symbol));
            if !raw.verified && !at_root {
                break;
            }
            let module = raw.module_path().map(|p| p.display().to_string());
            let build_id = raw.build_id();
            let base = Frame {
                module,
                build_id,
                offset: raw.file_offset,
                ..Frame::default()
            };
            if names.is_empty() {
                frames.push(base.clone());
            }
            for n in names {
                frames.push(Frame {
                    symbol: Some(n.symbol),
                    file: n.file,
                    line: n.line,
                    inlined: n.inlined,
                    ..base.clone()
                });
            }
            if at_root {
                root = true;
                break;
            }
        }
        Stack {
            frames,
            partial: trace.guessed || !(trace.end == End::Root || root),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            modules: self.modules.len(),
            module_bytes: self.modules.bytes(),
            processes: self.processes.len(),
            module_evictions: self.modules.evictions,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::Regs;

    #[inline(never)]
    fn leaf() -> u64 {
        std::hint::black_box(7)
    }

    static DATA: [u8; 64] = [0x5a; 64];

    /// A sample stopped at `leaf`'s first instruction whose stack holds
    /// `ra` where the return address belongs.
    fn at_leaf_entry(ra: u64) -> Sample {
        let mut stack = ra.to_le_bytes().to_vec();
        stack.resize(256, 0);
        Sample {
            pid: std::process::id(),
            regs: Regs {
                ip: leaf as *const () as u64,
                sp: 0x7ff0_0000_0000,
                bp: 0,
            },
            stack,
        }
    }

    #[test]
    fn a_return_address_after_no_call_ends_the_stack_unnamed() {
        // One byte into `leaf`: code, but no call instruction ends there.
        let fake = leaf as *const () as u64 + 1;
        let mut before = [0u8; crate::callsite::WINDOW];
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        mem.read_exact_at(&mut before, fake - crate::callsite::WINDOW as u64)
            .unwrap();
        assert!(
            !crate::callsite::follows_call(&before),
            "precondition: {before:02x?}"
        );
        let mut stacks = Stacks::new(Config::default());
        let trace = stacks.unwind(&at_leaf_entry(fake)).unwrap();
        assert_eq!(trace.end(), End::Unverified);
        assert_eq!(trace.frames().len(), 2);
        assert!(!trace.frames()[1].verified);
        let stack = stacks.symbolize(&trace);
        // The unverified frame is not shown (it is no known root).
        assert_eq!(stack.frames.len(), 1, "{stack:?}");
        assert!(stack.frames[0].symbol.as_deref().unwrap().ends_with("leaf"));
        assert!(stack.partial);
    }

    #[test]
    fn a_return_address_outside_code_is_dropped() {
        let mut stacks = Stacks::new(Config::default());
        let trace = stacks
            .unwind(&at_leaf_entry(DATA.as_ptr() as u64 + 8))
            .unwrap();
        assert_eq!(trace.end(), End::Unverified);
        assert_eq!(trace.frames().len(), 1);
        assert!(trace.partial());
    }

    #[test]
    fn traces_and_stacks_cross_threads() {
        fn send<T: Send>() {}
        send::<crate::Trace>();
        send::<crate::Stack>();
    }
}
