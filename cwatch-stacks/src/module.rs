/*!
One mapped binary: opened once through `/proc/<pid>/map_files/` (the exact
mapped inode) or, without the capability for that, `/proc/<pid>/root/<path>`
checked against the mapping's device and inode. Its ELF file gives the
build-id, the `PT_LOAD` segments (to turn addresses into file offsets), the
unwind sections (`.eh_frame` + `.eh_frame_hdr`, else `.debug_frame`,
decompressed when needed; see `cfi`).
The open file stays with the cache entry: symbolization and call-site checks
read through it, so a binary replaced on disk is never misread.
*/
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{
    Object, ObjectSection,
    read::elf::{ElfFile64, ProgramHeader},
};

use crate::{
    Error,
    cfi::{Section, UnwindData, fde_ranges},
    maps::{Mapping, ProcFs, split_dev},
};

/// The symbolizer estimate: a fixed part, plus a factor of the symbol
/// tables' size (blazesym sorts and indexes every symbol), plus half the
/// DWARF (units, line programs and function ranges parsed on demand), or
/// twice its inflated size where it is compressed (inflated into memory,
/// then parsed).
/// Measured on libc, Rust, C++ and Go binaries (see the crate doc).
const SYMBOLIZER_BASE: usize = 64 << 10;
const SYMBOL_FACTOR: usize = 2;
const DEBUG_DIVISOR: usize = 2;

/// Identity of a mapped file: device and inode as `/proc/<pid>/maps` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: (u32, u32),
    pub inode: u64,
}

impl FileKey {
    pub fn of(m: &Mapping) -> Self {
        Self {
            dev: m.dev,
            inode: m.inode,
        }
    }
}

/// What a stack frame keeps of its binary: small, shared, no open file.
/// Equal when the file and build-id are.
#[derive(Debug)]
pub struct ModuleInfo {
    pub key: FileKey,
    /// The path as mapped (in the process's mount namespace).
    pub path: PathBuf,
    pub build_id: Option<Box<[u8]>>,
    /// Where it was first opened from, to open it again once evicted.
    pub origin: Option<(u32, Mapping)>,
}

impl PartialEq for ModuleInfo {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.build_id == other.build_id
    }
}

impl Eq for ModuleInfo {}

impl std::hash::Hash for ModuleInfo {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.build_id.hash(state);
    }
}

impl ModuleInfo {
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id
            .as_ref()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
    }
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub exec: bool,
}

/// An opened, parsed binary.
#[derive(Debug)]
pub struct Elf {
    pub info: Arc<ModuleInfo>,
    pub file: File,
    pub loads: Vec<Load>,
    pub unwind: UnwindData,
    /// Go binaries keep frame pointers in every function with a frame.
    pub is_go: bool,
    /// What blazesym will hold for this binary once it symbolizes in it,
    /// estimated from its symbol tables and debug info (see the crate doc).
    pub symbolizer_estimate: usize,
}

impl Elf {
    /// Opens the file of `m` (a mapping of process `pid`) and parses it.
    pub fn open(proc: &ProcFs, pid: u32, m: &Mapping, map_files: bool) -> Result<Self, Error> {
        let path = m.file_path().ok_or_else(|| Error::Module {
            path: PathBuf::new(),
            what: "not a file mapping".into(),
        })?;
        let file = open_mapped(proc, pid, m, path, map_files)?;
        let mut elf = Self::parse(file, FileKey::of(m), path)?;
        if let Some(info) = Arc::get_mut(&mut elf.info) {
            info.origin = Some((pid, m.clone()));
        }
        Ok(elf)
    }

    /// Opens an evicted module again where it was first found, if that is
    /// still the same binary (same build-id; same inode without one).
    pub fn reopen(proc: &ProcFs, info: &ModuleInfo, map_files: bool) -> Option<Self> {
        let (pid, m) = info.origin.as_ref()?;
        let elf = Self::open(proc, *pid, m, map_files).ok()?;
        let same = match (&info.build_id, &elf.info.build_id) {
            (Some(a), Some(b)) => a == b,
            (None, None) => elf
                .file
                .metadata()
                .is_ok_and(|md| split_dev(md.dev()) == info.key.dev && md.ino() == info.key.inode),
            _ => false,
        };
        same.then_some(elf)
    }

    /// Parses an already opened file.
    pub fn parse(file: File, key: FileKey, path: &Path) -> Result<Self, Error> {
        let bad = |what: String| Error::Module {
            path: path.to_owned(),
            what,
        };
        let cache = object::ReadCache::new(&file);
        let elf = ElfFile64::<object::Endianness, _>::parse(&cache)
            .map_err(|e| bad(format!("not a 64-bit ELF file: {e}")))?;
        let endian = elf.endian();
        let loads = elf
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
            .map(|ph| Load {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                exec: ph.p_flags(endian) & object::elf::PF_X != 0,
            })
            .collect::<Vec<_>>();
        let build_id = elf
            .build_id()
            .ok()
            .flatten()
            .map(|b| b.to_vec().into_boxed_slice());
        let is_go = elf.section_by_name(".gopclntab").is_some()
            || elf.section_by_name(".go.buildinfo").is_some();
        let range = |name: &str| {
            elf.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        let section = |name: &str| -> Option<Section> {
            let s = elf.section_by_name(name)?;
            let data = s.uncompressed_data().ok()?;
            (!data.is_empty()).then(|| Section {
                svma: s.address()..s.address() + s.size(),
                data: Arc::from(&*data),
            })
        };
        let mut unwind = UnwindData {
            text: range(".text"),
            got: range(".got"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            ..UnwindData::default()
        };
        if unwind.eh_frame.is_none() {
            unwind.debug_frame = section(".debug_frame");
        }
        unwind.ranges = fde_ranges(&unwind);
        // Sizes as blazesym will hold them: compressed debug sections
        // (Go's) are inflated into memory whole.
        let size = |name: &str| {
            elf.section_by_name(name)
                .map_or((0, false), |s| match s.compressed_file_range() {
                    Ok(r) if r.format != object::CompressionFormat::None => {
                        (r.uncompressed_size as usize, true)
                    }
                    _ => (s.size() as usize, false),
                })
        };
        let symbols = size(".symtab").0 + size(".dynsym").0;
        let debug = [
            ".debug_info",
            ".debug_line",
            ".debug_ranges",
            ".debug_rnglists",
            ".debug_abbrev",
            ".debug_str",
        ]
        .iter()
        .map(|n| match size(n) {
            (n, true) => 2 * n,
            (n, false) => n / DEBUG_DIVISOR,
        })
        .sum::<usize>();
        let symbolizer_estimate = SYMBOLIZER_BASE + symbols * SYMBOL_FACTOR + debug;
        drop(elf);
        drop(cache);
        Ok(Self {
            info: Arc::new(ModuleInfo {
                key,
                path: path.to_owned(),
                build_id,
                origin: None,
            }),
            file,
            loads,
            unwind,
            is_go,
            symbolizer_estimate,
        })
    }

    /// `avma - svma` for the segment that `m` maps, if any.
    pub fn bias(&self, m: &Mapping) -> Option<u64> {
        // Segments share pages at their edges: of those whose pages hold
        // the mapping's offset, take one with the mapping's permission.
        let holds = |l: &&Load| {
            let page_start = l.offset & !0xfff;
            page_start <= m.offset && m.offset < l.offset + l.filesz.max(1)
        };
        self.loads
            .iter()
            .filter(holds)
            .find(|l| l.exec == m.exec)
            .or_else(|| self.loads.iter().find(holds))
            .map(|l| {
                m.start
                    .wrapping_sub(m.offset)
                    .wrapping_add(l.offset)
                    .wrapping_sub(l.vaddr)
            })
    }

    /// The file offset of an address as linked, if a segment holds it.
    pub fn file_offset(&self, svma: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| l.vaddr <= svma && svma < l.vaddr + l.filesz)
            .map(|l| svma - l.vaddr + l.offset)
    }

    /// Bytes this entry holds (the unwind data; the file itself is not read
    /// into memory).
    pub fn cost(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.loads.len() * std::mem::size_of::<Load>()
            + self.unwind.cost()
    }
}

/// Opens a mapping's file: `map_files/` when allowed, else the path in the
/// process's root, which must still be the mapped inode.
fn open_mapped(
    proc: &ProcFs,
    pid: u32,
    m: &Mapping,
    path: &Path,
    map_files: bool,
) -> Result<File, Error> {
    if map_files && let Ok(f) = File::open(proc.map_file(pid, m)) {
        return Ok(f);
    }
    let rooted = proc.in_root(pid, path);
    let file = File::open(&rooted).map_err(|source| Error::Io {
        path: rooted.clone(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| Error::Io {
        path: rooted.clone(),
        source,
    })?;
    if split_dev(meta.dev()) != m.dev || meta.ino() != m.inode {
        return Err(Error::Module {
            path: rooted,
            what: "the file at this path is not the one mapped (replaced on disk?)".into(),
        });
    }
    Ok(file)
}
