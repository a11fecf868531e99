/*!
Names for addresses in one binary, through blazesym: ELF symbols, DWARF
function names, file:line and inlined calls where the binary (or its
separate debug file) has them, demangled (C++ and Rust). The binary is read
through the module's open file (`/proc/self/fd/N`), never by a path that
may since name another file. A name is only taken when blazesym's symbol
really spans the address (its size is known and the address is inside it,
or the address is the symbol itself, or DWARF ranges hold it): an address
past the end of the nearest symbol gets no name, only its module and offset.
*/
use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer, source};

/// One symbolized frame of a [`Stack`](crate::Stack); unknown members are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name (without Rust's hash suffix).
    pub symbol: Option<String>,
    /// The binary's path as mapped (in the process's mount namespace).
    pub module: Option<String>,
    /// The binary's GNU build-id, hex.
    pub build_id: Option<String>,
    /// File offset in `module` of the instruction (for return addresses,
    /// of the call: address − 1). With `build_id` it names the code exactly
    /// when there is no symbol.
    pub offset: Option<u64>,
    /// Source file (as the debug info names it, usually with its directory).
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the next frame (same machine frame).
    pub inlined: bool,
}

/// A symbolized stack: innermost frame first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// The stack may be incomplete: unwinding stopped before the outermost
    /// frame (end of the captured slice, a frame without unwind data), or a
    /// frame-pointer step may have skipped a frame. The frames shown are
    /// still right.
    pub partial: bool,
}

/// One name at an address: the function, or a function inlined there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub symbol: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
}

/// blazesym over one binary.
pub struct ModuleSymbolizer {
    symbolizer: Symbolizer,
    path: PathBuf,
    debug_syms: bool,
    lookups: u64,
}

impl std::fmt::Debug for ModuleSymbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleSymbolizer")
            .field("path", &self.path)
            .field("lookups", &self.lookups)
            .finish_non_exhaustive()
    }
}

fn code_location(ci: Option<&CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match ci {
        Some(ci) => (Some(ci.to_path().display().to_string()), ci.line),
        None => (None, None),
    }
}

impl ModuleSymbolizer {
    /// Reads the binary through `file`, which must stay open while this
    /// lives. Without `debug_syms` only ELF symbols are read (no DWARF, no
    /// separate debug file): for runtime libraries, whose lines no site
    /// shows, that saves most of the memory (libc's debug file: ~10 MiB).
    pub fn new(file: &File, debug_syms: bool) -> Self {
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .enable_auto_reload(false)
            .build();
        Self {
            symbolizer,
            path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            debug_syms,
            lookups: 0,
        }
    }

    /// Names at `svma`, innermost (inlined) first, outermost (the function
    /// the machine frame belongs to) last; empty when unknown.
    pub fn lookup(&mut self, svma: u64) -> Vec<Named> {
        self.lookups += 1;
        let mut src = source::Elf::new(&self.path);
        src.debug_syms = self.debug_syms;
        let src = source::Source::Elf(src);
        let Ok(Symbolized::Sym(sym)) = self
            .symbolizer
            .symbolize_single(&src, Input::VirtOffset(svma))
        else {
            return Vec::new();
        };
        // A sized symbol spans the address: blazesym checks an ELF symbol's
        // extent and a DWARF function's ranges. A DWARF function of several
        // ranges (hot/cold split) comes sizeless at address 0 with a
        // location: its ranges held the address. Any other sizeless symbol
        // (an ELF symbol without st_size) is only good for its own address.
        let sized = sym.size.is_some_and(|s| s > 0);
        let split_dwarf = sym.addr == 0 && sym.code_info.is_some();
        if !sized && !split_dwarf && sym.offset != 0 {
            return Vec::new();
        }
        let mut names = Vec::with_capacity(1 + sym.inlined.len());
        for f in sym.inlined.iter().rev() {
            let (file, line) = code_location(f.code_info.as_ref());
            names.push(Named {
                symbol: f.name.to_string(),
                file,
                line,
                inlined: true,
            });
        }
        let (file, line) = code_location(sym.code_info.as_deref());
        names.push(Named {
            symbol: sym.name.to_string(),
            file,
            line,
            inlined: false,
        });
        names
    }
}

/// Functions nothing calls: a stack that reaches one is whole, and whatever
/// the unwinder found beyond it is not a frame.
pub fn is_root(symbol: &str) -> bool {
    matches!(
        symbol,
        "_start"
            | "runtime.goexit"
            | "runtime.goexit.abi0"
            | "runtime.rt0_go"
            | "runtime.rt0_go.abi0"
            | "runtime.mstart"
            | "runtime.mstart.abi0"
            | "clone3"
            | "__clone3"
            | "clone"
            | "__clone"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_test_binary_and_refuses_outside_addresses() {
        let exe = File::open("/proc/self/exe").unwrap();
        let elf = crate::module::Elf::parse(
            exe.try_clone().unwrap(),
            crate::module::FileKey {
                dev: (0, 0),
                inode: 0,
            },
            std::path::Path::new("/proc/self/exe"),
        )
        .unwrap();
        let mut s = ModuleSymbolizer::new(&exe, true);
        // Find this function's address as linked: the running address minus
        // the load bias of our own text mapping.
        let here =
            names_this_test_binary_and_refuses_outside_addresses as *const () as usize as u64;
        let maps = crate::maps::ProcFs::default()
            .maps(std::process::id())
            .unwrap();
        let m = maps.iter().find(|m| m.contains(here)).unwrap();
        let svma = here - elf.bias(m).unwrap();
        let names = s.lookup(svma);
        let last = names.last().unwrap();
        assert!(
            last.symbol
                .ends_with("names_this_test_binary_and_refuses_outside_addresses"),
            "{names:?}"
        );
        assert!(
            last.file
                .as_deref()
                .is_some_and(|f| f.ends_with("symbolize.rs")),
            "{names:?}"
        );
        // Far past any symbol: nothing, not the nearest name.
        assert!(s.lookup(0x7fff_0000_0000).is_empty());
        assert_eq!(s.lookups, 2);
    }

    #[test]
    fn roots() {
        assert!(is_root("runtime.goexit.abi0") && is_root("_start"));
        assert!(!is_root("main") && !is_root("start"));
    }
}
