//! The maps the programs and the daemon share: what is kept per socket
//! owner and per listener, the counters, the control words, the watch list,
//! the histogram, the layout version and every name.
use crate::TASK_COMM_LEN;

/// `Owner::flags`: `tgid` called connect() on this socket.
pub const OWNER_CONNECT: u32 = 1;
/// `Owner::flags`: `tgid` called listen() on the socket (a `LISTENERS`
/// value; accepted sockets look their listener up by port).
pub const OWNER_LISTEN: u32 = 2;
/// `Owner::flags`: the socket left CLOSE_WAIT and waits in `LINGER` for
/// `tcp_destroy_sock`.
pub const OWNER_LINGER: u32 = 4;
/// `Owner::flags`: a stack sample of this socket's connect() is in
/// `SAMPLES` (`tcp_destroy_sock` deletes it).
pub const OWNER_SAMPLED: u32 = 8;

/// What the kernel knows about a socket's owner, kept in the `OWNERS` socket
/// storage: recorded at connect() or listen() in the owner's own context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    /// `OWNER_*` bits.
    pub flags: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Key of the `LISTENERS` map: a listening port in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Value of the `LISTENERS` map: who called listen(), and on which socket
/// (so that one listener closing does not forget another on the same port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub cookie: u64,
    pub owner: Owner,
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// TCP transitions into CLOSE_WAIT.
    pub const TRANSITIONS: u32 = 0;
    /// TCP transitions out of CLOSE_WAIT (to LAST_ACK or CLOSE).
    pub const CLOSED: u32 = 1;
    /// Ring buffer reservations that failed: events the daemon never saw.
    pub const EVENTS_LOST: u32 = 2;
    /// Inserts into `YOUNG` that failed (map full): sockets only
    /// reconciliation can find.
    pub const RECORDS_FULL: u32 = 3;
    /// Owners that could not be stored (socket storage allocation failed).
    pub const OWNERS_FULL: u32 = 4;
    /// Inserts into `LINGER` that failed (map full).
    pub const LINGER_FULL: u32 = 5;
    /// Stack samples that could not be kept (`SAMPLES` full).
    pub const SAMPLES_FULL: u32 = 6;
    /// Stack samples not taken: the user stack could not be read.
    pub const SAMPLES_UNREAD: u32 = 7;
    /// Number of counters.
    pub const LEN: u32 = 8;
}

/// Indexes into the `CONTROL` array: a few words the daemon and the programs
/// share.
pub mod control {
    /// 1 once a socket entered `YOUNG` after the daemon last looked (the
    /// program sends `EVENT_WAKE` when it sets it); the daemon sets it back
    /// to 0 when `YOUNG` holds nothing it has to look at again.
    pub const ARMED: u32 = 0;
    /// What connect() records: `WATCH_NONE`, `WATCH_LISTED` (the processes
    /// set in `WATCHED`) or `WATCH_ALL`.
    pub const WATCHING: u32 = 1;
    /// 1 while `LINGER` may hold records: only then does `tcp_destroy_sock`
    /// look at the socket at all. Set by the programs, cleared by the daemon.
    pub const LINGERING: u32 = 2;
    /// 1: connect() of a watched process also captures its user stack
    /// into `SAMPLES`. Set by the daemon.
    pub const STACKS: u32 = 3;
    /// 1 once `SAMPLES` may hold samples: only then does `tcp_destroy_sock`
    /// look for one. Set by the programs.
    pub const SAMPLED: u32 = 4;
    /// Number of words.
    pub const LEN: u32 = 6;
}

/// `control::WATCHING`: connect() records nothing.
pub const WATCH_NONE: u32 = 0;
/// `control::WATCHING`: connect() records the owner of processes whose bit
/// is set in `WATCHED`.
pub const WATCH_LISTED: u32 = 1;
/// `control::WATCHING`: connect() records the owner of every process
/// (debugging: every connection pays for it).
pub const WATCH_ALL: u32 = 2;

/// Bytes of the `EVENTS` ring as built (the daemon's default
/// `ring_buffer_size`; it may resize the ring before load): 32,768 events
/// of 128 bytes.
pub const EVENTS_RING_BYTES: u32 = 4 << 20;

/// Words of the `WATCHED` bitmap: one bit per pid up to the kernel's
/// largest `pid_max` (2^22 on 64-bit).
pub const WATCHED_WORDS: u32 = (1 << 22) / 64;

/// The duration histogram kept per CPU in `HIST`: the bucket bounds of
/// `cwatch_close_wait_duration_seconds` in ns (a duration goes into the
/// first bucket whose bound it does not exceed), then +Inf, then the sum.
pub mod hist {
    pub const BOUNDS_NS: [u64; 11] = [
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        10_000_000_000,
        60_000_000_000,
        300_000_000_000,
        1_800_000_000_000,
        3_600_000_000_000,
        21_600_000_000_000,
        86_400_000_000_000,
    ];
    /// Index of the +Inf bucket.
    pub const INF: u32 = 11;
    /// Index of the sum of durations, ns.
    pub const SUM: u32 = 12;
    /// Number of slots.
    pub const LEN: u32 = 13;

    /// The slot of a duration of `ns`.
    pub const fn bucket(ns: u64) -> u32 {
        let mut i = 0;
        while i < BOUNDS_NS.len() {
            if ns <= BOUNDS_NS[i] {
                return i as u32;
            }
            i += 1;
        }
        INF
    }
}

/// Version of the pinned maps' layout (`YOUNG`, `CLOSE_WAIT`, `LINGER`,
/// `OWNERS`, `LISTENERS`), stored in the pinned `LAYOUT` map. Bump it
/// whenever `SockRecord`, `Event` or `Owner` change meaning, even at the
/// same size: a daemon that finds another version in the pin directory
/// rebuilds the maps.
pub const LAYOUT_VERSION: u32 = 5;

/// How `--young-sockets` (`young`, at least 2) is shared between the
/// `NURSERY` array, where a socket entering CLOSE_WAIT gets its record
/// first (slot `cookie % slots`: cookies are handed out in sequence, so live
/// sockets rarely share one), and the `YOUNG` hash map, for sockets whose
/// slot was taken: the largest power of two up to half for the slots, the
/// rest for the map. Returns `(slots, map entries)`.
pub const fn young_split(young: u32) -> (u32, u32) {
    let half = if young < 2 { 1 } else { young / 2 };
    let slots = 1 << (31 - half.leading_zeros());
    let rest = young.saturating_sub(slots);
    (slots, if rest == 0 { 1 } else { rest })
}

/// `SockRecord::cookie` of a `NURSERY` slot being written (claimed, not
/// published yet); 0 is a free slot.
pub const SLOT_BUSY: u64 = u64::MAX;

/// The `NURSERY` slot of `cookie`, `mask` being the slot count less one.
pub const fn nursery_slot(cookie: u64, mask: u64) -> u32 {
    (cookie & mask) as u32
}

/// `BPF_F_MMAPABLE`: the daemon maps `NURSERY` into its memory and takes
/// slots with the same atomic compare-and-swap as the programs.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Names of the maps and programs in the object, shared so both sides agree.
pub mod names {
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_YOUNG: &str = "YOUNG";
    pub const MAP_NURSERY: &str = "NURSERY";
    pub const MAP_CLOSE_WAIT: &str = "CLOSE_WAIT";
    pub const MAP_WATCHED: &str = "WATCHED";
    pub const MAP_CONTROL: &str = "CONTROL";
    pub const MAP_HIST: &str = "HIST";
    pub const MAP_OWNERS: &str = "OWNERS";
    pub const MAP_COUNTERS: &str = "COUNTERS";
    pub const MAP_LINGER: &str = "LINGER";
    pub const MAP_LISTENERS: &str = "LISTENERS";
    pub const MAP_LAYOUT: &str = "LAYOUT";
    pub const MAP_SAMPLES: &str = "SAMPLES";
    pub const GLOBAL_OFFSETS: &str = "OFFSETS";
    /// The `NURSERY` slot count less one (a `u64` in .rodata).
    pub const GLOBAL_NURSERY_MASK: &str = "NURSERY_MASK";
    pub const PROG_SET_STATE: &str = "inet_sock_set_state";
    pub const PROG_DESTROY: &str = "tcp_destroy_sock";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_sockets_are_shared_between_slots_and_the_map() {
        assert_eq!(young_split(64), (32, 32));
        assert_eq!(young_split(100), (32, 68));
        assert_eq!(young_split(16_384), (8192, 8192));
        assert_eq!(young_split(1 << 20), (1 << 19, 1 << 19));
        assert_eq!(young_split(2), (1, 1));
        assert_eq!(young_split(0), (1, 1));
        for young in [64, 65, 1000, 12_345, 1 << 20] {
            let (slots, map) = young_split(young);
            assert!(slots.is_power_of_two());
            assert_eq!(slots + map, young, "{young}");
        }
    }

    #[test]
    fn a_cookie_has_one_slot() {
        assert_eq!(nursery_slot(0x1_0005, 7), 5);
        assert_eq!(nursery_slot(u64::MAX, 8191), 8191);
    }
}
