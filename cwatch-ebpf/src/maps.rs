//! The maps shared by the programs. Sizes here are defaults: the daemon may
//! resize them at load time.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use cwatch_common::{Owner, SockRecord, counter};

/// Allocate hash map elements on demand instead of up front: the maps are
/// sized for a million sockets but are usually nearly empty.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Events for the daemon (`cwatch_common::Event`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Sockets now in CLOSE_WAIT, keyed by socket cookie: the source of truth the
/// daemon mirrors and reconciles against.
#[map]
pub static CLOSE_WAIT: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Owners of outbound sockets, learned at connect() (SYN_SENT) in the owner's
/// context, keyed by socket cookie. Entries move into the CLOSE_WAIT record or
/// are deleted when the socket is destroyed.
#[map]
pub static OWNERS: HashMap<u64, Owner> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Per-CPU counters, indexed by `cwatch_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracing programs do not nest on one CPU
        // for the same program.
        unsafe { *slot += 1 };
    }
}
