//! Leak provenance, kernel side: at connect() of a watched process, the
//! user registers (`bpf_task_pt_regs`) and a bounded slice of the user stack
//! at sp go into `SAMPLES` by socket cookie; the daemon unwinds them in
//! userspace (`cwatch-stacks`) once the socket leaks. Built in a per-CPU
//! scratch buffer (16 KiB does not fit the 512-byte BPF stack); the map is
//! not preallocated, so only samples held cost memory.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::generated::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use cwatch_common::{
    OWNER_SAMPLED, Owner, SAMPLES_ENTRIES, STACK_BYTES, StackSample, control, counter,
};

use crate::{kernel::Sock, maps};

/// Allocate elements on demand (see `maps.rs`).
const BPF_F_NO_PREALLOC: u32 = 1;
const PAGE: u64 = 4096;

/// Stack samples by socket cookie. The daemon sizes it before load and
/// deletes a sample once unwound; `tcp_destroy_sock` deletes the sample of
/// a socket freed before that. Not pinned.
#[map]
pub static SAMPLES: HashMap<u64, StackSample> =
    HashMap::with_max_entries(SAMPLES_ENTRIES, BPF_F_NO_PREALLOC);

/// Where a sample is built before it is copied into `SAMPLES`.
#[map]
static SCRATCH: PerCpuArray<StackSample> = PerCpuArray::with_max_entries(1, 0);

/// Copies `size` bytes of user memory at `src` to `dst`; whether it all
/// could be read.
///
/// # Safety
/// `dst` must have room for `size` bytes (at most `STACK_BYTES`).
#[inline(always)]
unsafe fn read_user(dst: *mut u8, size: u32, src: u64) -> bool {
    // SAFETY: the caller's contract; a user address that faults makes the
    // helper fail (and zero `dst`), never fault.
    unsafe { bpf_probe_read_user(dst.cast(), size, src as *const _) == 0 }
}

/// Copies the user stack at `sp` into `dst`: `STACK_BYTES`, or, near the
/// top of the stack (where a whole read would run past the mapping), up to
/// the highest page boundary that can be read. Returns the bytes copied.
///
/// # Safety
/// `dst` must have room for `STACK_BYTES` bytes.
#[inline(always)]
unsafe fn read_stack(dst: *mut u8, sp: u64) -> u32 {
    // SAFETY (each read): sizes at most STACK_BYTES, as the caller's
    // buffer holds.
    unsafe {
        if read_user(dst, STACK_BYTES as u32, sp) {
            return STACK_BYTES as u32;
        }
        // Bytes up to the next page boundary: 1..=PAGE.
        let rest = (PAGE - (sp & (PAGE - 1))) as u32;
        let mut pages = (STACK_BYTES as u64 / PAGE) as u32 - 1;
        while pages > 0 {
            let size = rest + (pages - 1) * PAGE as u32;
            if size <= STACK_BYTES as u32 && read_user(dst, size, sp) {
                return size;
            }
            pages -= 1;
        }
    }
    0
}

/// Captures the user stack of the current task for `sk` (whose storage is
/// `owner`), if stack capture is on.
#[inline(always)]
pub fn capture(sk: Sock, tgid: u32, owner: *mut Owner) {
    if maps::control(control::STACKS) == 0 {
        return;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the current task is BTF-typed, as the helper needs; its user
    // registers (`struct pt_regs`, BTF-typed) are read with plain loads the
    // verifier makes fault-tolerant; `buf` is this CPU's scratch slot, ours
    // for the program's run; `owner` the socket's storage.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task.cast()) as *const pt_regs;
        if regs.is_null() {
            return;
        }
        let sp = (*regs).rsp;
        (*buf).tgid = tgid;
        (*buf).ip = (*regs).rip;
        (*buf).sp = sp;
        (*buf).bp = (*regs).rbp;
        let len = read_stack((*buf).stack.as_mut_ptr(), sp);
        if len == 0 {
            maps::count(counter::SAMPLES_UNREAD);
            return;
        }
        (*buf).len = len;
        // A reference: the 16 KiB value must never be copied onto the
        // 512-byte BPF stack (the helper reads it from the scratch slot).
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SAMPLES.insert(sk.cookie(), &*buf, 0);
        if inserted.is_err() {
            maps::count(counter::SAMPLES_FULL);
            return;
        }
        (*owner).flags |= OWNER_SAMPLED;
    }
    if maps::control(control::SAMPLED) == 0 {
        maps::set_control(control::SAMPLED, 1);
    }
}

/// `sk` is being freed: its sample goes with it, if it has one.
#[inline(always)]
pub fn forget(cookie: u64) {
    let _ = SAMPLES.remove(cookie);
}
