/*!
The kernel's `NURSERY` array, mapped into the daemon's memory: the first
stop of every socket entering CLOSE_WAIT (one slot per cookie, see
`cwatch_common::young_split`). The programs write a record in place and
free its slot when the socket leaves; the daemon reads the slots straight
from memory (no bpf() call) and reports a socket by taking its slot with
the same compare-and-swap on the cookie the programs use: whoever swaps
the cookie out owns the record, so a socket leaving while it is reported
is either reported or gone, never both.

A slot's cookie is 0 (free), `SLOT_BUSY` (being written) or the cookie of
the socket whose record it holds. A record is read between two reads of
its cookie and kept only when both agree: cookies are never reused, so the
record did not change in between.
*/
use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering, fence},
};

use aya::maps::{Array, IterableMap as _, MapData};
use cwatch_common::{SLOT_BUSY, SockRecord, nursery_slot};

/// `NURSERY`, mapped shared and writable; the map is kept with it.
pub struct Nursery {
    base: NonNull<SockRecord>,
    slots: u32,
    len: usize,
    /// `None` for the anonymous memory of tests.
    _map: Option<Array<MapData, SockRecord>>,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// atomics (cookies) or volatile reads checked against them (records).
unsafe impl Send for Nursery {}
// SAFETY: as above.
unsafe impl Sync for Nursery {}

impl Nursery {
    /// Maps `array` (created `BPF_F_MMAPABLE`; its size, a power of two,
    /// is the slot count the programs mask cookies with).
    pub fn map(array: Array<MapData, SockRecord>) -> io::Result<Self> {
        let slots = array.len();
        if !slots.is_power_of_two() {
            return Err(io::Error::other(format!(
                "NURSERY has {slots} slots, not a power of two"
            )));
        }
        let (base, len) = mapping(slots, Some(array.map().fd().as_fd()))?;
        Ok(Self {
            base,
            slots,
            len,
            _map: Some(array),
        })
    }

    /// Anonymous shared memory of `slots` free slots, as the kernel's
    /// array starts (for tests).
    #[cfg(test)]
    fn anonymous(slots: u32) -> io::Result<Self> {
        let (base, len) = mapping(slots, None)?;
        Ok(Self {
            base,
            slots,
            len,
            _map: None,
        })
    }

    fn slot(&self, index: u32) -> *mut SockRecord {
        debug_assert!(index < self.slots);
        // SAFETY: `index` is below `slots` (callers mask it), inside the
        // mapping.
        unsafe { self.base.as_ptr().add(index as usize) }
    }

    fn cookie(&self, index: u32) -> &AtomicU64 {
        // SAFETY: the record's first field, 8-byte aligned (array values
        // are), in the mapping for as long as `self`.
        unsafe { AtomicU64::from_ptr(self.slot(index).cast::<u64>()) }
    }

    /// Every record now in a slot.
    pub fn records(&self) -> Vec<SockRecord> {
        (0..self.slots)
            .filter_map(|index| self.record(index))
            .collect()
    }

    fn record(&self, index: u32) -> Option<SockRecord> {
        let cookie = self.cookie(index).load(Ordering::Acquire);
        if cookie == 0 || cookie == SLOT_BUSY {
            return None;
        }
        // SAFETY: inside the mapping; the kernel may be writing it, which
        // the second read of the cookie detects.
        let rec = unsafe { std::ptr::read_volatile(self.slot(index)) };
        fence(Ordering::Acquire);
        (self.cookie(index).load(Ordering::Acquire) == cookie)
            .then_some(SockRecord { cookie, ..rec })
    }

    /// Takes `cookie`'s record out of its slot; `false` when the slot does
    /// not hold it (it left, or it is in `YOUNG`).
    pub fn take(&self, cookie: u64) -> bool {
        cookie != 0
            && cookie != SLOT_BUSY
            && self
                .cookie(nursery_slot(cookie, u64::from(self.slots - 1)))
                .compare_exchange(cookie, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// A shared mapping of `fd` at offset 0 (anonymous memory without one),
/// `slots` records long rounded up to whole pages, as the kernel maps the
/// array: its start and length.
fn mapping(slots: u32, fd: Option<BorrowedFd<'_>>) -> io::Result<(NonNull<SockRecord>, usize)> {
    use rustix::mm::{MapFlags, ProtFlags};
    let page = rustix::param::page_size();
    let len = (slots as usize * size_of::<SockRecord>()).next_multiple_of(page);
    let prot = ProtFlags::READ | ProtFlags::WRITE;
    let null = std::ptr::null_mut();
    // SAFETY: a new mapping, no larger than the array; nothing else in this
    // process aliases it.
    let ptr = unsafe {
        match fd {
            Some(fd) => rustix::mm::mmap(null, len, prot, MapFlags::SHARED, fd, 0),
            None => rustix::mm::mmap_anonymous(null, len, prot, MapFlags::SHARED),
        }
    }?;
    let base = NonNull::new(ptr.cast::<SockRecord>())
        .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
    Ok((base, len))
}

impl Drop for Nursery {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        if let Err(err) = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) } {
            tracing::debug!("munmap of NURSERY: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `rec` into its slot as the kernel's enter does.
    fn enter(nursery: &Nursery, rec: SockRecord) {
        let index = nursery_slot(rec.cookie, u64::from(nursery.slots - 1));
        let cookie = nursery.cookie(index);
        cookie
            .compare_exchange(0, SLOT_BUSY, Ordering::AcqRel, Ordering::Acquire)
            .expect("a free slot");
        // SAFETY: a claimed slot inside the mapping.
        unsafe {
            std::ptr::write_volatile(
                nursery.slot(index),
                SockRecord {
                    cookie: SLOT_BUSY,
                    ..rec
                },
            )
        };
        cookie.swap(rec.cookie, Ordering::SeqCst);
    }

    fn rec(cookie: u64, start_ns: u64) -> SockRecord {
        SockRecord {
            cookie,
            start_ns,
            ..SockRecord::zeroed()
        }
    }

    #[test]
    fn records_are_read_from_published_slots_only() {
        let nursery = Nursery::anonymous(8).unwrap();
        assert!(nursery.records().is_empty(), "free slots hold nothing");
        enter(&nursery, rec(9, 100));
        enter(&nursery, rec(12, 200));
        // A slot being written: claimed, not published.
        nursery.cookie(3).store(SLOT_BUSY, Ordering::SeqCst);
        let mut found = nursery.records();
        found.sort_by_key(|r| r.cookie);
        assert_eq!(found, vec![rec(9, 100), rec(12, 200)]);
    }

    #[test]
    fn a_record_is_taken_once_and_only_by_its_cookie() {
        let nursery = Nursery::anonymous(8).unwrap();
        enter(&nursery, rec(9, 100));
        assert!(!nursery.take(17), "same slot, another socket");
        assert!(!nursery.take(SLOT_BUSY));
        assert!(!nursery.take(0));
        assert!(nursery.take(9));
        assert!(!nursery.take(9), "taken already (or freed by the kernel)");
        assert!(nursery.records().is_empty());
        // The slot is free again for the next socket.
        enter(&nursery, rec(17, 300));
        assert_eq!(nursery.records(), vec![rec(17, 300)]);
    }
}
