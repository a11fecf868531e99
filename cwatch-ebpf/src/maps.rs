//! The maps the programs share with each other and with the daemon, and the
//! small operations on them the programs use.
use aya_ebpf::{
    bindings::bpf_map_type::BPF_MAP_TYPE_SK_STORAGE,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use cwatch_common::{
    BPF_F_MMAPABLE, EVENTS_RING_BYTES, Event, Listener, ListenerKey, Owner, SLOT_BUSY, SockRecord,
    WATCH_ALL, WATCH_NONE, WATCHED_WORDS, control, counter, hist, nursery_slot,
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
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Young sockets, first stop: slot `cookie % slots` holds the
/// record of a socket that entered CLOSE_WAIT, written in place. Taking a
/// slot is one compare-and-swap on its cookie, by the programs (enter:
/// 0 → `SLOT_BUSY` → cookie; leave: cookie → 0) and by the daemon (report:
/// cookie → 0, through its mapping of the array): whoever swaps the cookie
/// out owns the record. No lock, no allocation, no hashing on the path
/// every connection takes. Sized by the daemon before load
/// (`young_split`), with `NURSERY_MASK`. Pinned.
#[map]
pub static NURSERY: Array<SockRecord> = Array::with_max_entries(1 << 13, BPF_F_MMAPABLE);

/// The `NURSERY` slot count less one, set by the daemon before load (in
/// .rodata: the verifier sees a constant).
#[unsafe(no_mangle)]
static NURSERY_MASK: u64 = (1 << 13) - 1;

#[inline(always)]
fn slot_of(cookie: u64) -> u32 {
    // SAFETY: a reference to a static; volatile so the compiler cannot
    // fold the default above.
    nursery_slot(cookie, unsafe { core::ptr::read_volatile(&NURSERY_MASK) })
}

/// Young sockets whose `NURSERY` slot was taken, by cookie, until they
/// leave or the daemon reports them (moves them to `CLOSE_WAIT`).
/// Preallocated: its insert and delete allocate nothing. The daemon sizes
/// it before load; when full, the socket is counted (`RECORDS_FULL`) and
/// left to reconciliation. Pinned, as `NURSERY`.
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

/// `*word`, atomically replaced by `new` when it is `old` (`BPF_CMPXCHG`,
/// Linux 5.12); returns what it was. Inline assembly: Rust's BPF target has
/// no atomic read-modify-write operations.
///
/// # Safety
/// `word` must be a valid, 8-byte aligned pointer into a map value.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn cmpxchg(word: *mut u64, old: u64, new: u64) -> u64 {
    let prev: u64;
    // SAFETY: the caller's contract; the instruction reads and writes only
    // `*word`, and r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({word} + 0, r0, {new})",
            word = in(reg) word,
            new = in(reg) new,
            inout("r0") old => prev,
            options(nostack),
        );
    }
    prev
}

/// `*word = new`, atomically and as a full barrier (`BPF_XCHG`).
///
/// # Safety
/// As for [`cmpxchg`].
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn xchg(word: *mut u64, new: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!(
            "{new} = xchg_64({word} + 0, {new})",
            word = in(reg) word,
            new = inout(reg) new => _,
            options(nostack),
        );
    }
}

/// The same operations where the crate is only checked (clippy on the
/// host), with the host's atomics.
///
/// # Safety
/// As for the BPF ones.
#[cfg(not(target_arch = "bpf"))]
unsafe fn cmpxchg(word: *mut u64, old: u64, new: u64) -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    // SAFETY: the caller's contract.
    let word = unsafe { AtomicU64::from_ptr(word) };
    word.compare_exchange(old, new, SeqCst, SeqCst)
        .unwrap_or_else(|prev| prev)
}

/// # Safety
/// As for the BPF one.
#[cfg(not(target_arch = "bpf"))]
unsafe fn xchg(word: *mut u64, new: u64) {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    // SAFETY: the caller's contract.
    unsafe { AtomicU64::from_ptr(word) }.swap(new, SeqCst);
}

/// The cookie word of a `NURSERY` slot (its record's first field).
#[inline(always)]
fn cookie_word(slot: *mut SockRecord) -> *mut u64 {
    slot.cast::<u64>()
}

/// Claims `cookie`'s slot for writing (free → `SLOT_BUSY`); `None` when
/// another socket holds it. Every field must be written before
/// [`publish`].
#[inline(always)]
pub fn claim(cookie: u64) -> Option<*mut SockRecord> {
    let slot = NURSERY.get_ptr_mut(slot_of(cookie))?;
    // SAFETY: a pointer into NURSERY (map values are 8-byte aligned).
    (unsafe { cmpxchg(cookie_word(slot), 0, SLOT_BUSY) } == 0).then_some(slot)
}

/// Makes a claimed slot's record visible under `cookie`.
#[inline(always)]
pub fn publish(slot: *mut SockRecord, cookie: u64) {
    // SAFETY: `slot` came from `claim`. An exchange, not a store: a full
    // barrier, so the fields written before are seen with the cookie.
    unsafe { xchg(cookie_word(slot), cookie) };
}

/// `cookie`'s slot, when it holds `cookie`'s record.
#[inline(always)]
pub fn nursery_of(cookie: u64) -> Option<*mut SockRecord> {
    let slot = NURSERY.get_ptr_mut(slot_of(cookie))?;
    // SAFETY: a pointer into NURSERY.
    (unsafe { core::ptr::read_volatile(cookie_word(slot)) } == cookie).then_some(slot)
}

/// Frees `cookie`'s slot; `false` when the daemon took it first (then the
/// record is in `CLOSE_WAIT`).
#[inline(always)]
pub fn release(slot: *mut SockRecord, cookie: u64) -> bool {
    // SAFETY: `slot` came from `nursery_of`.
    unsafe { cmpxchg(cookie_word(slot), cookie, 0) == cookie }
}
