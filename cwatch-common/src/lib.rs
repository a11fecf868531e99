/*!
Types shared by the kernel side (`cwatch-ebpf`) and the daemon (`cwatch-daemon`).

Everything here is `#[repr(C)]` and `Copy`: the eBPF programs write these
structs into maps and the ring buffer, the daemon reads the same bytes back.
Changing a layout means changing both sides at once; the size assertions at
the bottom catch accidental drift. [`tcp`]: states and families;
[`offsets`]: the struct offsets resolved from BTF; [`record`]: the record of
a socket in CLOSE_WAIT and the events; [`maps`]: everything else the maps
hold, and their names.
*/
#![no_std]

pub mod maps;
pub mod offsets;
pub mod record;
pub mod tcp;

pub use maps::*;
pub use offsets::*;
pub use record::*;
pub use tcp::*;

const _: () = assert!(core::mem::size_of::<SockRecord>() == 96);
const _: () = assert!(core::mem::size_of::<Event>() == 120);
const _: () = assert!(core::mem::size_of::<Owner>() == 24);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 96);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);
const _: () = assert!(core::mem::size_of::<Listener>() == 32);
const _: () = assert!(hist::bucket(1_000_000) == 0 && hist::bucket(1_000_001) == 1);
const _: () = assert!(hist::bucket(u64::MAX) == hist::INF);

#[cfg(feature = "user")]
mod pod {
    // SAFETY, for each impl below: the type is #[repr(C)] and Copy, holds
    // only integers and byte arrays (any bit pattern is valid), and has no
    // padding bytes that could be uninitialised (the size assertions above).
    // SAFETY: see above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockRecord {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ListenerKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Listener {}
}
