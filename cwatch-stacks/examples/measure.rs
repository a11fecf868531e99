//! Measures unwinding and symbolization of real connect-time samples: for
//! each test program (C -O2 with/without frame pointers and unwind tables,
//! stripped C, C++, Rust, Go, stripped Go) it captures a sample at connect()
//! with ptrace, then times unwind + symbolize on cold caches and cached, and
//! counts heap bytes with a counting allocator. Prints a Markdown table, and
//! each stack with `--stacks`.
//!
//! `cargo run --release -p cwatch-stacks --features testing --example measure [-- --stacks]`
use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::TcpListener,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use cwatch_stacks::{Config, Stacks, site, testing};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const STACK_BYTES: usize = 16 << 10;
const ROUNDS: u32 = 2000;

/// Peak resident memory of this process (VmHWM).
fn max_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let show = std::env::args().any(|a| a == "--stacks");
    let dir = std::env::temp_dir().join(format!("cwatch-stacks-measure-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "RawFrame: {} B; a trace: {} B + frames\n",
        std::mem::size_of::<cwatch_stacks::RawFrame>(),
        std::mem::size_of::<cwatch_stacks::Trace>()
    );
    println!(
        "| program | frames | partial | site | unwind first | unwind new pid | unwind cached | symbolize first | symbolize cached | heap after first | trace |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for recipe in testing::ALL {
        let (exe, _) = match testing::build(recipe, &dir) {
            Ok(b) => b,
            Err(e) => {
                println!("| {} | not built: {e} |", recipe.name);
                continue;
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cap = testing::capture_connect(&exe, port, STACK_BYTES)?;
        let heap0 = live();
        let mut stacks = Stacks::new(Config::default());
        let t = Instant::now();
        let trace = stacks.unwind(&cap.sample)?;
        let unwind_first = t.elapsed();
        let t = Instant::now();
        let stack = stacks.symbolize(&trace);
        let sym_first = t.elapsed();
        let heap_first = live().saturating_sub(heap0);
        let t = Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(stacks.unwind(&cap.sample)?);
        }
        let unwind_cached = t.elapsed() / ROUNDS;
        // A new process of known binaries: maps read and placed again.
        let t = Instant::now();
        for _ in 0..ROUNDS / 10 {
            stacks.forget_process(cap.sample.pid);
            std::hint::black_box(stacks.unwind(&cap.sample)?);
        }
        let unwind_new_pid = t.elapsed() / (ROUNDS / 10);
        let t = Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(stacks.symbolize(&trace));
        }
        let sym_cached = t.elapsed() / ROUNDS;
        println!(
            "| {} | {} | {} | {} | {:.0?} | {:.0?} | {:.1?} | {:.1?} | {:.1?} | {} KiB | {} B |",
            recipe.name,
            stack.frames.len(),
            stack.partial,
            site(&stack).unwrap_or_else(|| "-".into()),
            unwind_first,
            unwind_new_pid,
            unwind_cached,
            sym_first,
            sym_cached,
            heap_first >> 10,
            trace.heap_bytes() + std::mem::size_of_val(&trace),
        );
        if show {
            eprintln!(
                "== {} (end {:?}, guessed {})",
                recipe.name,
                trace.end(),
                trace.guessed()
            );
            for f in &stack.frames {
                eprintln!(
                    "   {:<60} {}:{} {} +{:#x}{}",
                    f.symbol.as_deref().unwrap_or("?"),
                    f.file
                        .as_deref()
                        .map_or("", |p| p.rsplit('/').next().unwrap_or(p)),
                    f.line.unwrap_or(0),
                    f.module
                        .as_deref()
                        .map_or("?", |p| p.rsplit('/').next().unwrap_or(p)),
                    f.offset.unwrap_or(0),
                    if f.inlined { " (inlined)" } else { "" }
                );
            }
            eprintln!("   stats {:?}", stacks.stats());
            eprintln!("   max rss {} KiB", max_rss_kib());
        }
        drop(stacks);
        drop(cap);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
