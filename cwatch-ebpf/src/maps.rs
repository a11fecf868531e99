//! The maps the programs share with each other and with the daemon, and the
//! small operations on them the programs use.
use aya_ebpf::{
    bindings::bpf_map_type::BPF_MAP_TYPE_SK_STORAGE,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use cwatch_common::{
    Event, Listener, ListenerKey, Owner, SockRecord, WATCH_ALL, WATCH_NONE, WATCHED_WORDS, control,
    counter, hist,
};

use crate::kernel::Sock;

/// Allocate hash map elements on demand instead of up front: for maps sized
/// for a million entries that are usually nearly empty, and only ever
/// written on rare paths.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Events for the daemon (`cwatch_common::Event`): only about sockets that
/// stayed past the grace, sockets cwatch did not see enter, dead sockets,
/// and wake-ups. The daemon may resize it before load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Every socket as it enters CLOSE_WAIT, by cookie, until it leaves or the
/// daemon reports it (moves it to `CLOSE_WAIT`). Preallocated: the insert
/// and delete of the common short CLOSE_WAIT allocate nothing. The daemon
/// sizes it before load; when full, the socket is counted
/// (`RECORDS_FULL`) and left to reconciliation. Pinned.
#[map]
pub static YOUNG: HashMap<u64, SockRecord> = HashMap::with_max_entries(1 << 14, 0);

/// Sockets the daemon reported: they stayed in CLOSE_WAIT past the grace.
/// Written by the daemon, deleted here when they leave CLOSE_WAIT. Pinned,
/// so records (and their start times) outlive a daemon restart.
#[map]
pub static CLOSE_WAIT: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Sockets that left CLOSE_WAIT without their file being released and are
/// not destroyed yet, keyed by cookie; the value is the leave event. A
/// socket the kernel closed (reset, keepalive, `ss -K`, or shut down without
/// close()) stays here for as long as a process holds its fd. Pinned.
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

/// The owner of each outbound socket of a watched process, learned at
/// connect() (SYN_SENT) in the owner's context, and the `OWNER_LINGER` mark
/// of a socket that left CLOSE_WAIT while still held. Socket-local storage:
/// the kernel frees it with the socket. Other sockets get none.
#[btf_map]
pub static OWNERS: OwnerStorage = OwnerStorage {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
};

/// Who listens on each port: learned at listen() (LISTEN), forgotten when
/// that listener closes. The daemon looks an accepted socket's local port
/// up here when it reports it. Pinned.
#[map]
pub static LISTENERS: HashMap<ListenerKey, Listener> =
    HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

/// The watch list: one bit per pid (tgid), set by the daemon for processes
/// that leaked and those the configuration names.
#[map]
pub static WATCHED: Array<u64> = Array::with_max_entries(WATCHED_WORDS, 0);

/// Words the daemon and the programs share (`cwatch_common::control`).
#[map]
pub static CONTROL: Array<u32> = Array::with_max_entries(control::LEN, 0);

/// The CLOSE_WAIT duration histogram, per CPU (`cwatch_common::hist`).
#[map]
pub static HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(hist::LEN, 0);

/// One entry: the `cwatch_common::LAYOUT_VERSION` of the pinned maps beside
/// it, written by the daemon. Never touched by the programs.
#[map]
pub static LAYOUT: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `cwatch_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

#[inline(always)]
pub fn count(index: u32) {
    add_per_cpu(&COUNTERS, index, 1);
}

#[inline(always)]
fn add_per_cpu(map: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; one program run at a time per CPU.
        unsafe { *slot += n };
    }
}

/// A socket left CLOSE_WAIT after `ns`: into the histogram.
#[inline(always)]
pub fn observe(ns: u64) {
    add_per_cpu(&HIST, hist::bucket(ns), 1);
    add_per_cpu(&HIST, hist::SUM, ns);
}

/// Control word `index`.
#[inline(always)]
pub fn control(index: u32) -> u32 {
    CONTROL.get(index).copied().unwrap_or(0)
}

/// Sets control word `index` (a plain store: the daemon and every CPU only
/// ever write whole words, and a lost race costs one extra wake-up or one
/// extra lookup, never a wrong number).
#[inline(always)]
pub fn set_control(index: u32, value: u32) {
    if let Some(word) = CONTROL.get_ptr_mut(index) {
        // SAFETY: a slot of the array map, valid for the program's run.
        unsafe { core::ptr::write_volatile(word, value) };
    }
}

/// Whether connect() by `tgid` records its owner.
#[inline(always)]
pub fn watched(tgid: u32) -> bool {
    match control(control::WATCHING) {
        WATCH_NONE => false,
        WATCH_ALL => true,
        _ => WATCHED
            .get(tgid / 64)
            .is_some_and(|word| word & (1u64 << (tgid % 64)) != 0),
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
