//! The maps the programs share with each other and with the daemon.
use aya_ebpf::{
    bindings::bpf_map_type::BPF_MAP_TYPE_SK_STORAGE,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use cwatch_common::{Event, Listener, ListenerKey, Owner, SockRecord, counter};

use crate::kernel::Sock;

/// Allocate hash map elements on demand instead of up front: the map is
/// sized for a million sockets but usually nearly empty.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Events for the daemon (`cwatch_common::Event`). The daemon may resize it
/// before load (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Sockets now in CLOSE_WAIT, keyed by socket cookie. Pinned by the daemon,
/// so records (and their start times) outlive a daemon restart.
#[map]
pub static CLOSE_WAIT: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Sockets that left CLOSE_WAIT and are not destroyed yet, keyed by cookie;
/// the value is the leave event. A socket the kernel closed (reset,
/// keepalive, `ss -K`, or shut down without close()) stays here for as long
/// as a process holds its fd. Pinned like `CLOSE_WAIT`.
#[map]
pub static LINGER: HashMap<u64, Event> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// A BTF map definition for `BPF_MAP_TYPE_SK_STORAGE` (aya-ebpf 0.2.1 has
/// no `SkStorage` type). Same layout as aya-ebpf's definitions: the loader
/// reads the map's type, key, value and flags from these fields' BTF types.
#[repr(C)]
pub struct OwnerStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const Owner,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader replaces; never dereferenced.
unsafe impl Sync for OwnerStorage {}

/// The owner of each outbound socket, learned at connect() (SYN_SENT) in the
/// owner's context, and the `OWNER_LINGER` mark of a socket that left
/// CLOSE_WAIT while still held. Socket-local storage: the kernel frees it
/// with the socket, so it is bounded by the live sockets. Accepted sockets
/// get none (no copy per accepted connection): they find their owner in
/// `LISTENERS`.
#[btf_map]
pub static OWNERS: OwnerStorage = OwnerStorage {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
};

/// Who listens on each port: learned at listen() (LISTEN), forgotten when
/// that listener closes. An accepted socket entering CLOSE_WAIT looks up its
/// local port here for its owner hint, so accepting costs nothing. Pinned.
#[map]
pub static LISTENERS: HashMap<ListenerKey, Listener> =
    HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

/// One entry: the `cwatch_common::LAYOUT_VERSION` of the pinned maps beside
/// it, written by the daemon. Never touched by the programs.
#[map]
pub static LAYOUT: Array<u32> = Array::with_max_entries(1, 0);

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
pub fn owner_of(sk: Sock, create: bool) -> Option<*mut Owner> {
    use aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE;
    use aya_ebpf::helpers::generated::bpf_sk_storage_get;
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    let map = (&raw const OWNERS).cast_mut().cast::<core::ffi::c_void>();
    // SAFETY: `sk` is a BTF-typed socket, as the helper needs, and `map` the
    // socket-storage map's definition.
    let ptr = unsafe { bpf_sk_storage_get(map, sk.as_ptr(), core::ptr::null_mut(), flags) };
    (!ptr.is_null()).then_some(ptr.cast::<Owner>())
}
