/*!
# cwatch-stacks: who opened this socket

Connect-time user stacks, unwound in userspace the way `perf --call-graph
dwarf` does, and symbolized on demand. The kernel side copies, at the
`SYN_SENT` transition (inside `connect()`, in the caller's task), the user
registers (`bpf_task_pt_regs`: ip, sp, bp) and a bounded slice of the user
stack starting at sp. This crate does the rest:

```no_run
use cwatch_stacks::{Config, Regs, Sample, Stacks, site};
# let (pid, ip, sp, bp, bytes) = (1, 0, 0, 0, vec![]);
let mut stacks = Stacks::new(Config::default());
let sample = Sample { pid, regs: Regs { ip, sp, bp }, stack: bytes };
// At capture time (the process's mappings are read now): cheap, compact.
let trace = stacks.unwind(&sample)?;
// Later, when the socket turns out leaked: names, lines, the site.
let stack = stacks.symbolize(&trace);
println!("{}", site(&stack).unwrap_or_default());
# Ok::<(), cwatch_stacks::Error>(())
```

## How

- **Mappings** from `/proc/<pid>/maps` (proc root injectable, parsing
  unit-tested on fixtures). Each executable file mapping's binary is opened
  once, through `/proc/<pid>/map_files/` (the mapped inode itself; needs
  CAP_SYS_ADMIN) or else `/proc/<pid>/root/<path>`, checked against the
  mapping's device and inode — so binaries in containers and binaries
  replaced on disk are read right, or not at all.
- **Unwinding** with framehop over the binary's `.eh_frame` +
  `.eh_frame_hdr` (or `.debug_frame`, decompressed: Go), frame pointers
  where there is no unwind data. framehop falls back to frame pointers
  silently; this crate first asks whether an FDE covers each address, so a
  step is CFI (trusted), a frame-pointer step in Go code (Go keeps frame
  pointers in every function with a frame: trusted past the first frame),
  or a guess, which marks the stack `partial` (a frame may be missing).
  Every return address must fall in an executable file mapping right after
  a call instruction (checked in the binary's bytes); the first that does
  not ends the stack. Unwinding stops cleanly at the end of the captured
  slice (`partial`).
- **Symbolization** with blazesym, through the module's open file: ELF
  symbols, DWARF names, file:line and inlined frames where present,
  demangled (C++, Rust without hash). A symbol is used only when its extent
  really covers the address; otherwise the frame keeps only its module,
  build-id and file offset. Reaching `_start`, `clone3` or Go's
  `runtime.goexit` makes a stack whole.
- **[`site`]**: the first two frames outside libc, ld.so, libstdc++,
  libgcc, Rust `std`/`core`/`alloc`/`tokio`/`mio`, Go `runtime`/`syscall`/
  `net`/`internal`: `DataApi::connect_to (data_api.cc:120) ← Worker::handle`.

## Memory bound

Binaries are cached by device + inode: at most `max_modules` (128) open
files and `max_bytes` (64 MiB) of unwind sections plus an estimate of
blazesym's memory for the binary (64 KiB + 2 × symbol tables + ½ DWARF
size), least recently used evicted first (the processes using an evicted
binary are dropped too and rebuilt on their next sample). A [`Trace`] holds
about 64 bytes per frame; frames share their module record.

## Limits

- x86-64 only; 64-bit ELF only. JIT code (Java, Node, Python's own frames)
  and anonymous executable memory end the stack there.
- A Go binary built with `-ldflags=-s -w` has no `.debug_frame` and no
  symbols: frame pointers give its frames (first frame `partial`: its
  leaf may not have pushed one), and they show as module + offset.
- Code without unwind data and without frame pointers cannot be unwound
  through; the stack ends there, `partial`.
- Signal frames are not unwound through.
*/

mod cache;
mod callsite;
mod cfi;
mod error;
pub mod maps;
mod module;
mod sample;
mod site;
mod stacks;
mod symbolize;
#[cfg(feature = "testing")]
pub mod testing;
mod unwind;
mod worker;

pub use error::Error;
pub use maps::ProcFs;
pub use sample::{End, RawFrame, Regs, Sample, Trace};
pub use site::{is_runtime, is_runtime_module, short_name, site};
pub use stacks::{Config, Stacks, Stats};
pub use symbolize::{Frame, Stack};
pub use worker::Worker;
