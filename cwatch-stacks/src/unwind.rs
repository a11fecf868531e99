/*!
The unwinding loop for one process: its executable file mappings placed at
their load bias, a framehop unwinder over their `.eh_frame` /
`.debug_frame` data, and the checks framehop does not make. framehop falls
back to frame pointers silently wherever unwind data is missing; this loop
asks first whether an FDE covers the address, so every step is known to be
CFI (trusted), a frame-pointer step in Go code (Go keeps frame pointers in
every function with a frame) or a guess (flagged: a frame may be missing).
Every return address must land in an executable file mapping right after a
call instruction; the first that does not ends the stack.
*/
use std::{os::unix::fs::FileExt, sync::Arc};

use framehop::{
    FrameAddress, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use crate::{
    callsite,
    maps::Mapping,
    module::{Elf, ModuleInfo},
    sample::{End, RawFrame, Sample, Trace},
};

/// An executable mapping of a file, placed in the address space.
#[derive(Debug)]
pub struct Placed {
    pub start: u64,
    pub end: u64,
    /// `avma - svma`.
    pub bias: u64,
    pub elf: Arc<Elf>,
}

/// What the unwinder knows of one process.
pub struct Process {
    pub placed: Vec<Placed>,
    /// Executable mappings without a usable file (anonymous, `[vdso]`, a
    /// binary that could not be opened): addresses in them are code, just
    /// not code we can unwind or name.
    pub opaque: Vec<(u64, u64)>,
    unwinder: UnwinderX86_64<Arc<[u8]>>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("placed", &self.placed)
            .field("opaque", &self.opaque)
            .finish_non_exhaustive()
    }
}

/// How a step from one frame to its caller was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Cfi,
    GoFramePointer,
    Guess,
}

impl Process {
    /// Places `modules` (each executable mapping with its opened binary, or
    /// `None` when it could not be opened).
    pub fn new(execs: Vec<(Mapping, Option<Arc<Elf>>)>) -> Self {
        let mut unwinder = UnwinderX86_64::new();
        let mut placed = Vec::new();
        let mut opaque = Vec::new();
        for (m, elf) in execs {
            let Some((elf, bias)) = elf.and_then(|e| e.bias(&m).map(|b| (e, b))) else {
                opaque.push((m.start, m.end));
                continue;
            };
            let u = &elf.unwind;
            let info = framehop::ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: u.text.clone(),
                got_svma: u.got.clone(),
                eh_frame_svma: u.eh_frame.as_ref().map(|s| s.svma.clone()),
                eh_frame: u.eh_frame.as_ref().map(|s| s.data.clone()),
                eh_frame_hdr_svma: u.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
                eh_frame_hdr: u.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
                debug_frame: u.debug_frame.as_ref().map(|s| s.data.clone()),
                ..Default::default()
            };
            let name = elf.info.path.display().to_string();
            unwinder.add_module(framehop::Module::new(name, m.start..m.end, bias, info));
            placed.push(Placed {
                start: m.start,
                end: m.end,
                bias,
                elf,
            });
        }
        placed.sort_by_key(|p| p.start);
        Self {
            placed,
            opaque,
            unwinder,
        }
    }

    pub fn placed_at(&self, addr: u64) -> Option<&Placed> {
        let i = self.placed.partition_point(|p| p.end <= addr);
        self.placed.get(i).filter(|p| p.start <= addr)
    }

    /// Whether `addr` is in any executable mapping this process had.
    pub fn is_code(&self, addr: u64) -> bool {
        self.placed_at(addr).is_some() || self.opaque.iter().any(|&(s, e)| s <= addr && addr < e)
    }

    fn step_kind(&self, lookup: u64, first: bool) -> Step {
        match self.placed_at(lookup) {
            Some(p) if p.elf.unwind.covers(lookup.wrapping_sub(p.bias)) => Step::Cfi,
            Some(p) if p.elf.is_go && !first => Step::GoFramePointer,
            _ => Step::Guess,
        }
    }

    fn frame(&self, addr: u64, is_return_address: bool, verified: bool) -> RawFrame {
        let lookup = if is_return_address { addr - 1 } else { addr };
        let placed = self.placed_at(lookup);
        let svma = placed.map_or(0, |p| lookup.wrapping_sub(p.bias));
        RawFrame {
            addr,
            is_return_address,
            lookup,
            svma,
            file_offset: placed.and_then(|p| p.elf.file_offset(svma)),
            module: placed.map(|p| Arc::clone(&p.elf.info) as Arc<ModuleInfo>),
            verified,
        }
    }

    /// Whether `ra` can be a return address: in a placed binary, right after
    /// a call instruction (read through the binary's open file).
    fn plausible_return(&self, ra: u64) -> bool {
        let Some(p) = self.placed_at(ra - 1) else {
            return false;
        };
        let Some(off) = p.elf.file_offset(ra.wrapping_sub(p.bias)) else {
            return false;
        };
        let start = off.saturating_sub(callsite::WINDOW as u64);
        let mut buf = [0u8; callsite::WINDOW];
        let want = (off - start) as usize;
        match p.elf.file.read_exact_at(&mut buf[..want], start) {
            Ok(()) => callsite::follows_call(&buf[..want]),
            Err(_) => false,
        }
    }

    /// Unwinds `sample` (which must belong to this process).
    pub fn unwind(&self, sample: &Sample, cache: &mut CacheX86_64, max_frames: usize) -> Trace {
        let r = sample.regs;
        let mut regs = UnwindRegsX86_64::new(r.ip, r.sp, r.bp);
        let mut read = |addr: u64| sample.read_u64(addr).ok_or(());
        let mut frames = vec![self.frame(r.ip, false, true)];
        let mut address = FrameAddress::from_instruction_pointer(r.ip);
        let mut guessed = false;
        let end = loop {
            if frames.len() >= max_frames {
                break End::MaxFrames;
            }
            let step = self.step_kind(address.address_for_lookup(), frames.len() == 1);
            match self
                .unwinder
                .unwind_frame(address, &mut regs, cache, &mut read)
            {
                Ok(None) => break End::Root,
                Err(framehop::Error::CouldNotReadStack(_)) => break End::EndOfCapture,
                Err(_) => break End::Stuck,
                Ok(Some(ra)) => {
                    guessed |= step == Step::Guess;
                    let Some(next) = FrameAddress::from_return_address(ra) else {
                        break End::Root;
                    };
                    if !self.plausible_return(ra) {
                        if self.is_code(ra - 1) {
                            frames.push(self.frame(ra, true, false));
                        }
                        break End::Unverified;
                    }
                    frames.push(self.frame(ra, true, true));
                    address = next;
                }
            }
        };
        frames.shrink_to_fit();
        Trace {
            frames,
            end,
            guessed,
        }
    }
}
