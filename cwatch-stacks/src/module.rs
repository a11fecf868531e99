/*!
One mapped binary: opened once through `/proc/<pid>/map_files/` (the exact
mapped inode) or, without the capability for that, `/proc/<pid>/root/<path>`
checked against the mapping's device and inode. Its ELF file gives the
build-id, the `PT_LOAD` segments (to turn addresses into file offsets), the
unwind sections (`.eh_frame` + `.eh_frame_hdr`, else `.debug_frame`,
decompressed when needed), and which addresses that unwind data covers.
The open file stays with the cache entry: symbolization and call-site checks
read through it, so a binary replaced on disk is never misread.
*/
use std::{
    fs::File,
    ops::Range,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
use object::{
    Object, ObjectSection,
    read::elf::{ElfFile64, ProgramHeader},
};

use crate::{
    Error,
    maps::{Mapping, ProcFs, split_dev},
};

/// The symbolizer estimate: a fixed part, plus a factor of the symbol
/// tables' size (blazesym sorts and indexes every symbol), plus a share of
/// the DWARF (units, line programs and function ranges parsed on demand).
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

/// A section's address (as linked) and bytes.
#[derive(Clone, Debug)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: Arc<[u8]>,
}

/// The unwind data of one binary and the address ranges it covers.
#[derive(Debug, Default)]
pub struct UnwindData {
    pub text: Option<Range<u64>>,
    pub got: Option<Range<u64>>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Section>,
    /// FDE ranges when there is no `.eh_frame_hdr` table: sorted, merged.
    ranges: Vec<Range<u64>>,
}

impl UnwindData {
    /// Whether an FDE covers this address (as linked).
    pub fn covers(&self, svma: u64) -> bool {
        if let (Some(hdr), Some(eh)) = (&self.eh_frame_hdr, &self.eh_frame) {
            return self.hdr_covers(hdr, eh, svma);
        }
        let i = self.ranges.partition_point(|r| r.end <= svma);
        self.ranges.get(i).is_some_and(|r| r.start <= svma)
    }

    fn bases(&self) -> BaseAddresses {
        let mut bases = BaseAddresses::default();
        if let Some(hdr) = &self.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(hdr.svma.start);
        }
        if let Some(eh) = &self.eh_frame {
            bases = bases.set_eh_frame(eh.svma.start);
        }
        if let Some(text) = &self.text {
            bases = bases.set_text(text.start);
        }
        if let Some(got) = &self.got {
            bases = bases.set_got(got.start);
        }
        bases
    }

    fn hdr_covers(&self, hdr: &Section, eh: &Section, svma: u64) -> bool {
        let bases = self.bases();
        let Ok(parsed) = EhFrameHdr::new(&hdr.data, LittleEndian).parse(&bases, 8) else {
            return false;
        };
        let Some(table) = parsed.table() else {
            return false;
        };
        let eh_frame = EhFrame::new(&eh.data, LittleEndian);
        table
            .fde_for_address(&eh_frame, &bases, svma, EhFrame::cie_from_offset)
            .is_ok()
    }

    /// Bytes held.
    pub fn cost(&self) -> usize {
        [&self.eh_frame, &self.eh_frame_hdr, &self.debug_frame]
            .iter()
            .filter_map(|s| s.as_ref())
            .map(|s| s.data.len())
            .sum::<usize>()
            + self.ranges.len() * std::mem::size_of::<Range<u64>>()
    }
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
        let size = |name: &str| elf.section_by_name(name).map_or(0, |s| s.size() as usize);
        let symbols = size(".symtab") + size(".dynsym");
        let debug = [
            ".debug_info",
            ".debug_line",
            ".debug_ranges",
            ".debug_rnglists",
            ".debug_abbrev",
        ]
        .iter()
        .map(|n| size(n))
        .sum::<usize>();
        let symbolizer_estimate = SYMBOLIZER_BASE + symbols * SYMBOL_FACTOR + debug / DEBUG_DIVISOR;
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

/// Every FDE's range, sorted and merged where they touch, for sections
/// without a lookup table (`.debug_frame`, or `.eh_frame` without a header).
fn fde_ranges(u: &UnwindData) -> Vec<Range<u64>> {
    use gimli::{CieOrFde, DebugFrame};
    let bases = u.bases();
    let mut ranges = Vec::new();
    if let Some(df) = &u.debug_frame {
        let mut section = DebugFrame::new(&df.data, LittleEndian);
        section.set_address_size(8);
        let mut entries = section.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            if let CieOrFde::Fde(partial) = entry
                && let Ok(fde) = partial.parse(DebugFrame::cie_from_offset)
            {
                ranges.push(fde.initial_address()..fde.initial_address() + fde.len());
            }
        }
    } else if let (Some(eh), None) = (&u.eh_frame, &u.eh_frame_hdr) {
        let section = EhFrame::new(&eh.data, LittleEndian);
        let mut entries = section.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            if let CieOrFde::Fde(partial) = entry
                && let Ok(fde) = partial.parse(EhFrame::cie_from_offset)
            {
                ranges.push(fde.initial_address()..fde.initial_address() + fde.len());
            }
        }
    }
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged.shrink_to_fit();
    merged
}
