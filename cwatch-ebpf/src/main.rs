//! cwatch's kernel side: tracepoint programs that follow TCP sockets into and
//! out of CLOSE_WAIT. Each program lives in `probes/`; the maps they share in
//! `maps.rs`; reading kernel structs at BTF-resolved offsets in `kernel.rs`; the
//! connect-time stack capture in `stack.rs`.
#![no_std]
#![no_main]
// Inline assembly for the atomic compare-and-swap Rust's BPF target lacks
// (`maps.rs`); the build enables this one unstable feature for this crate.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod events;
mod kernel;
mod log;
mod maps;
mod probes;
mod stack;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
