//! The maps the programs share with each other and with the daemon.
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{HashMap, PerCpuArray, RingBuf},
};
use cwatch_common::{Owner, SockRecord, counter};

/// Allocate hash map elements on demand instead of up front: the map is
/// sized for a million sockets but usually nearly empty.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Events for the daemon (`cwatch_common::Event`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Sockets now in CLOSE_WAIT, keyed by socket cookie: the source of truth the
/// daemon mirrors and reconciles against.
#[map]
pub static CLOSE_WAIT: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// The owner of each outbound socket, learned at connect() (SYN_SENT) in the
/// owner's context. Socket-local storage: the kernel frees it with the
/// socket, so it is bounded by the live sockets and needs no cleanup hook.
#[btf_map]
pub static OWNERS: SkStorage<Owner> = SkStorage::new();

/// Per-CPU counters, indexed by `cwatch_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; one program run at a time per CPU.
        unsafe { *slot += 1 };
    }
}

/// `OWNERS` entry of `sk`: `create` makes a zeroed one when there is none.
#[inline(always)]
pub fn owner_of(sk: *mut core::ffi::c_void, create: bool) -> Option<*mut Owner> {
    use aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE;
    use aya_ebpf::helpers::generated::bpf_sk_storage_get;
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    let map = (&raw const OWNERS).cast_mut().cast::<core::ffi::c_void>();
    // SAFETY: `sk` is the tracepoint's BTF-typed socket, as the helper needs.
    let ptr = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), flags) };
    (!ptr.is_null()).then_some(ptr.cast::<Owner>())
}
