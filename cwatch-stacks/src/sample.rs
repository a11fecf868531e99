/*!
What goes in and what comes out of unwinding: a [`Sample`] (user registers
and the stack bytes the kernel copied at `sp`) and a [`Trace`], the compact
unsymbolized stack worth keeping per socket (addresses as offsets into
binaries identified by device/inode and build-id, so it stays meaningful
after the process maps something else or exits).
*/
use std::{hash::Hash, sync::Arc};

use crate::module::ModuleInfo;

/// The user registers the unwinder starts from (x86-64): at connect() they
/// are what `bpf_task_pt_regs(current)` holds, i.e. the state at the
/// `syscall` instruction of the libc (or Go runtime) wrapper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// One capture: the process, its registers, and `stack[i]` = the byte at
/// user address `regs.sp + i` (a bounded slice, e.g. 16 KiB).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub pid: u32,
    pub regs: Regs,
    pub stack: Vec<u8>,
}

impl Sample {
    /// The 8 bytes at user address `addr`, if the slice holds them.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.regs.sp)?).ok()?;
        let bytes = self.stack.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// Why unwinding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum End {
    /// The unwind data (or a zero frame pointer / return address) says this
    /// is the outermost frame: the stack is whole.
    Root,
    /// The next frame's data lies past the captured slice.
    EndOfCapture,
    /// The next return address is not in an executable file mapping, or is
    /// not preceded by a call instruction: it is kept (flagged unverified) as
    /// the last frame only so that a known outermost function (Go's
    /// `runtime.goexit`) can be recognised; otherwise it is dropped.
    Unverified,
    /// The frame limit was reached.
    MaxFrames,
    /// The unwinder could not go on (it would loop, or went backwards).
    Stuck,
}

/// One unsymbolized frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawFrame {
    /// The instruction pointer (first frame) or a return address.
    pub addr: u64,
    pub is_return_address: bool,
    /// The address to look up: `addr`, or `addr - 1` for return addresses
    /// (inside the call instruction, so the caller's line is right).
    pub lookup: u64,
    /// `lookup` as linked in the binary (ELF virtual address).
    pub svma: u64,
    /// `lookup` as an offset in the binary's file.
    pub file_offset: Option<u64>,
    pub(crate) module: Option<Arc<ModuleInfo>>,
    /// False only for a last frame kept under [`End::Unverified`].
    pub verified: bool,
}

impl RawFrame {
    /// The mapped path of this frame's binary.
    pub fn module_path(&self) -> Option<&std::path::Path> {
        self.module.as_deref().map(|m| m.path.as_path())
    }

    /// The binary's GNU build-id, in hex.
    pub fn build_id(&self) -> Option<String> {
        self.module.as_deref().and_then(ModuleInfo::build_id_hex)
    }
}

/// An unwound, unsymbolized stack: innermost frame first. Equal traces are
/// the same call path through the same binaries (use it to deduplicate).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Trace {
    pub(crate) frames: Vec<RawFrame>,
    pub(crate) end: End,
    /// Some step followed a frame pointer where no unwind data vouched that
    /// the function keeps one: a frame may be missing.
    pub(crate) guessed: bool,
}

impl Trace {
    pub fn frames(&self) -> &[RawFrame] {
        &self.frames
    }

    pub fn end(&self) -> End {
        self.end
    }

    /// Whether a frame may be missing (a frame-pointer step without unwind
    /// data to vouch for it).
    pub fn guessed(&self) -> bool {
        self.guessed
    }

    /// Whether the stack may be incomplete, before symbolization (which can
    /// still recognise an outermost function and clear it).
    pub fn partial(&self) -> bool {
        self.guessed || self.end != End::Root
    }

    /// Heap bytes this trace holds (the modules are shared, not counted).
    pub fn heap_bytes(&self) -> usize {
        self.frames.capacity() * std::mem::size_of::<RawFrame>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_inside_the_slice() {
        let mut stack = vec![0u8; 24];
        stack[8..16].copy_from_slice(&0x1122334455667788u64.to_le_bytes());
        let s = Sample {
            pid: 1,
            regs: Regs {
                ip: 0,
                sp: 0x1000,
                bp: 0,
            },
            stack,
        };
        assert_eq!(s.read_u64(0x1008), Some(0x1122334455667788));
        assert_eq!(s.read_u64(0x1010), Some(0));
        assert_eq!(s.read_u64(0x1011), None);
        assert_eq!(s.read_u64(0xff8), None);
        assert_eq!(s.read_u64(u64::MAX), None);
    }
}
