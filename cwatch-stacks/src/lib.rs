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
files and `max_bytes` (64 MiB) charged, least recently used evicted first;
the processes using an evicted binary are dropped with it and rebuilt on
their next sample, and a trace whose binary was evicted opens it again
(same build-id, else same inode) while its process lives. A binary is
charged its unwind sections plus an estimate of blazesym's memory for it:
64 KiB + 2 × its symbol tables + ½ its DWARF (2 × the inflated size of
compressed DWARF). Measured against the real heap on the test programs the
estimate is 0.6× (Go) to 2× (C) of it. Runtime libraries (libc, ld.so,
libstdc++, libgcc) are symbolized from ELF symbols only, without DWARF or
their separate debug file: with Debian's `libc6-dbg` installed that is
~280 KiB instead of ~11 MiB, and 0.4 ms instead of 30–50 ms for the first
stack. Processes: at most `max_processes` (1024), mappings re-read after
`maps_ttl` (2 s) or when the instruction pointer is outside them.

A [`Trace`] is 32 bytes + 56 per frame (frames share their module
record): 424 B for the 7 frames of a C stack, 1.2 KiB for Go's 22. The
sample itself (16 KiB of stack) is only needed until it is unwound.

## Measured

`cargo run --release -p cwatch-stacks --features testing --example measure`
on the 2-core VM (shared; medians of noisy runs), a 16 KiB slice captured
at connect():

| program | frames | partial | site | unwind: first / new pid / cached | symbolize: first / cached | heap after first |
|---|---|---|---|---|---|---|
| C -O2 (no frame pointers) | 7 | no | `open_leaky_connection (leak.c:16) ← worker_handle` | 0.7–2 ms / 0.1 ms / 6–8 µs | 0.45 ms / 30–50 µs | 278 KiB |
| C -O2 -fno-omit-frame-pointer | 7 | no | same | 0.7 ms / 0.08 ms / 7–12 µs | 0.4 ms / 30–50 µs | 278 KiB |
| C, frame pointers, no unwind tables | 7 | yes | same | 0.6 ms / 0.08 ms / 6–9 µs | 0.4 ms / 40 µs | 278 KiB |
| C, neither | 2 | yes | `open_leaky_connection (leak.c:16)` | 0.6 ms / 0.04 ms / 2 µs | 0.4 ms / 10 µs | 276 KiB |
| C stripped | 7 | no | `c-O2-stripped.stripped+0x11ec ← …+0x1208` | 0.5 ms / 0.1 ms / 6–10 µs | 0.3 ms / 30–50 µs | 263 KiB |
| C++ -O2 | 7 | no | `DataApi::connect_to (data_api.cc:24) ← Worker::handle` | 1 ms / 0.14 ms / 11 µs | 0.9 ms / 45–110 µs | 622 KiB |
| Rust -O2 (std) | 26 | no | `leak::open_leaky_connection (leak.rs:7) ← leak::worker_handle` | 0.8 ms / 0.1 ms / 8–20 µs | 9–18 ms / 60–150 µs | 1.7 MiB |
| Go 1.19 | 22 | no | `main.openLeakyConnection (leak.go:15) ← main.workerHandle` | 0.9 ms / 0.3 ms / 15–35 µs | 9–15 ms / 30–80 µs | 3.9 MiB |
| Go `-ldflags=-s -w` | 19 | yes | `go-stripped+0x26ae ← …+0x6a567` (no names) | 0.15 ms / 0.05–0.25 ms / 8–18 µs | 0.1 ms / 20–45 µs | 44 KiB |

"First" opens and parses every binary of the process; "new pid" is a new
process of binaries already cached (its maps read, its mappings placed;
Go's `.debug_frame` index is rebuilt per process); "cached" is a second
sample of the same process. Symbolizing is by far the larger cost, which
is why it is lazy.

## Coverage

- **C/C++ with or without frame pointers**: whole stacks from `.eh_frame`
  (gcc and clang emit it by default, `-fomit-frame-pointer` or not, and
  `strip` keeps it). Inlined frames come from DWARF; hot/cold split
  functions are named by their DWARF ranges.
- **C/C++ built without unwind tables** (`-fno-asynchronous-unwind-tables`):
  frame pointers if it has them — right, flagged `partial`; without either
  the stack ends at the first such frame (`partial`).
- **Stripped binaries**: whole stacks, frames without names: module,
  GNU build-id and file offset (what an offline symbolizer needs).
- **Rust**: whole stacks through std (`.eh_frame`), names demangled without
  hash, inlined std frames from DWARF.
- **Go** (1.19 here): `.debug_frame` (compressed) gives whole stacks to
  `runtime.goexit`; built with `-s -w` frame pointers give the frames (Go
  keeps them in every function with a frame), the first step through the
  frameless syscall wrapper may skip one runtime frame (`partial`), and no
  names (blazesym reads ELF/DWARF, not Go's pclntab). Go binaries carry a
  Go build ID, not a GNU one: `build_id` is `None` for them.

## Limits

- x86-64 only; 64-bit ELF only. JIT code (Java, Node, Python's own frames)
  and anonymous executable memory end the stack there.
- Code without unwind data and without frame pointers cannot be unwound
  through; the stack ends there, `partial`.
- The call-instruction check is a filter, not a proof: a data word that
  happens to follow an `E8`/`FF /2` encoding inside an executable mapping
  passes it. It only matters where the unwind data itself is wrong or
  missing.
- Signal frames are not unwound through.
- The kernel side copies the slice with `bpf_probe_read_user`, which
  fails whole if any page is unmapped: near the top of a stack it copies
  less (down to the highest page boundary it can read) rather than nothing.

## In cwatch

The kernel side (`cwatch-ebpf`'s `stack.rs`) captures at the `SYN_SENT`
transition, only for processes on the watch list, 16,256 bytes (a 16 KiB
kernel allocation with the hash element around it) into a map by socket
cookie; the daemon (`cwatch-daemon`'s `provenance`) unwinds and symbolizes
the sample once the socket is leaked, on a thread of its own, and deletes
it from the kernel; the kernel deletes the samples of sockets freed before
that. Measured on the shared 2-core VM (Linux 6.18, `kernel.bpf_stats_enabled=1`,
`cwatch-churn` loopback connect/accept/close, 10 `inet_sock_set_state` and
2 `tcp_destroy_sock` runs per connection; ranges over runs of a noisy
machine):

| connect() of | `inet_sock_set_state` ns/run (mean over its 10 runs) | its runs per connection, ns | `tcp_destroy_sock` ns/run |
|---|---|---|---|
| a process not watched (`--watch none`, or a list without it) | 158–208 | 1,600–2,100 | 69–121 |
| a watched process, owner only (`--stack-samples 0`) | 242–276 | 2,400–2,900 | 81–85 |
| a watched process, owner and stack (the default for watched ones) | 468–499 | 4,700–5,000 | 129–153 |

So the stack costs a watched connect about 2.3 µs more in the kernel
(copying 16 KiB from the user stack and into the map, one allocation),
its close about 0.1 µs (the delete), and a connect of a process not on
the list nothing: the watch check comes first, as before. Memory: one
16 KiB kernel allocation per held sample (at most `--stack-samples`,
default 1024, i.e. 16 MiB, only while held); in the daemon a leaked
socket costs a map entry (cookie → shared record, ~24 bytes) and every
distinct stack one [`Trace`] plus its symbolized [`Stack`] (a few hundred
bytes to a few KiB), shared by all the sockets opened from it.
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
