//! `tp_btf/inet_sock_set_state`: fired inside the kernel's tcp_set_state() for
//! every TCP state change. What a healthy connection costs is what this
//! program does on its common paths, so they do as little as they can:
//!
//! - into CLOSE_WAIT: the peer sent FIN (softirq context; the current task is
//!   not the owner). Count it and write its record in place into its
//!   `NURSERY` slot (one compare-and-swap; `YOUNG`, preallocated, when the
//!   slot is taken); no event. Only the first socket after the daemon last
//!   looked sends one, a wake-up: the daemon then reports, after its grace,
//!   the young sockets still there.
//! - out of CLOSE_WAIT: the owner closed or shut it down (LAST_ACK) or the
//!   kernel reset it (CLOSE). Count it, add its duration to the histogram,
//!   free its slot (or delete its record). A socket still young (the daemon
//!   never reported it) that left by its last close() ends there, silently:
//!   the healthy path.
//!   The daemon is told only about sockets it reported, sockets it never saw
//!   enter, and sockets left without their file being released (reset,
//!   keepalive, `ss -K`, shutdown): those wait in `LINGER` until
//!   `tcp_destroy_sock`, as an fd may still hold them.
//! - into SYN_SENT: we are in connect(), in the owner's context. Only for a
//!   watched process (one bit in `WATCHED`) is the owner kept in the
//!   socket's storage, and, when stack capture is on, its user registers
//!   and stack slice in `SAMPLES` (`stack.rs`).
//! - into LISTEN: we are in listen(); remember the listener's owner by port
//!   in `LISTENERS` (LISTEN → CLOSE: forget it).
//!
//! Every other transition returns after two loads and one test of a mask.
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use cwatch_common::{
    EVENT_LEAVE, IPPROTO_TCP, Listener, ListenerKey, OWNER_CONNECT, OWNER_LINGER, OWNER_LISTEN,
    Owner, REC_ESTIMATED, REC_OUTBOUND, REC_RELEASED, REC_UNACCEPTED, SockRecord, TASK_COMM_LEN,
    control, counter, tcp_state,
};

use crate::{
    events::{event, submit, wake},
    kernel::{self, Sock},
    log,
    maps::{self, CLOSE_WAIT, LINGER, LISTENERS, YOUNG},
    stack,
};

const STATE_CLOSE_WAIT: u32 = tcp_state::CLOSE_WAIT;
const LISTEN: u32 = tcp_state::LISTEN;
const SYN_SENT: u32 = tcp_state::SYN_SENT;
const CLOSE: u32 = tcp_state::CLOSE;
const LAST_ACK: u32 = tcp_state::LAST_ACK;

/// New states worth a look: entering CLOSE_WAIT, listen(), connect().
const NEW_STATES: u32 = 1 << STATE_CLOSE_WAIT | 1 << LISTEN | 1 << SYN_SENT;
/// Old states worth a look: leaving CLOSE_WAIT, a listener closing.
const OLD_STATES: u32 = 1 << STATE_CLOSE_WAIT | 1 << LISTEN;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let old = ctx.arg::<i32>(1) as u32;
    let new = ctx.arg::<i32>(2) as u32;
    // The common path: one test, no branch per state.
    if (1u32.wrapping_shl(new) & NEW_STATES) | (1u32.wrapping_shl(old) & OLD_STATES) == 0 {
        return 0;
    }
    let entering = new == STATE_CLOSE_WAIT && old != STATE_CLOSE_WAIT;
    let leaving = old == STATE_CLOSE_WAIT && new != STATE_CLOSE_WAIT;
    // A listener leaves LISTEN only for CLOSE (close, shutdown, disconnect).
    // LISTEN → SYN_RECV is a child being cloned from it: up to at least
    // 6.12 the child still carries the listener's cookie at that point
    // (inet_csk_clone_lock sets its own after the state change), so it
    // would pass for the listener and forget it.
    let listening = new == LISTEN || (old == LISTEN && new == CLOSE);
    let connecting = new == SYN_SENT && maps::control(control::WATCHING) != 0;
    if !(entering || leaving || listening || connecting) {
        return 0;
    }
    // SAFETY: the tracepoint's first argument is its BTF-typed `struct sock *`.
    let sk = unsafe { Sock::from_btf(ctx.arg(0)) };
    if sk.protocol() != IPPROTO_TCP {
        return 0; // MPTCP and SCTP fire the same tracepoint
    }
    if entering {
        enter(sk, old, new);
    } else if leaving {
        leave(sk, old, new);
    } else if connecting {
        remember_owner(sk);
    } else if new != old {
        listener(sk, new == LISTEN);
    }
    0
}

/// connect() of a process on the watch list: its owner goes into the
/// socket's storage.
fn remember_owner(sk: Sock) {
    let tgid = kernel::current_tgid();
    if !maps::watched(tgid) {
        return;
    }
    match maps::owner_of(sk, true) {
        // SAFETY: the socket's own storage, valid for this program run.
        Some(owner) => unsafe {
            (*owner).tgid = tgid;
            (*owner).flags = OWNER_CONNECT;
            (*owner).comm = kernel::leader_comm();
            stack::capture(sk, tgid, owner);
        },
        None => {
            maps::count(counter::OWNERS_FULL);
            log::map_full("OWNERS", sk.cookie());
        }
    }
}

/// listen() (`listening`) or the listener's close: remember or forget who
/// listens on the port. A listener that closes forgets only its own entry.
fn listener(sk: Sock, listening: bool) {
    let cookie = sk.cookie();
    let key = ListenerKey {
        netns: sk.netns(),
        port: sk.local_port(),
        _pad: 0,
    };
    if listening {
        let value = Listener {
            cookie,
            owner: Owner {
                tgid: kernel::current_tgid(),
                flags: OWNER_LISTEN,
                comm: kernel::leader_comm(),
            },
        };
        if LISTENERS.insert(key, value, 0).is_err() {
            maps::count(counter::OWNERS_FULL);
            log::map_full("LISTENERS", cookie);
        }
    // SAFETY: the value is only read, at once.
    } else if let Some(known) = unsafe { LISTENERS.get(key) }
        && known.cookie == cookie
    {
        let _ = LISTENERS.remove(key);
    }
}

fn enter(sk: Sock, old: u32, new: u32) {
    maps::count(counter::TRANSITIONS);
    let cookie = sk.cookie();
    // SAFETY: a helper without arguments.
    let start_ns = unsafe { bpf_ktime_get_boot_ns() };
    match maps::claim(cookie) {
        Some(slot) => {
            // SAFETY: a claimed slot: nothing else writes or keeps it until
            // it is published.
            fill(sk, unsafe { &mut *slot }, start_ns);
            maps::publish(slot, cookie);
        }
        None => {
            let mut rec = SockRecord::zeroed();
            rec.cookie = cookie;
            fill(sk, &mut rec, start_ns);
            if YOUNG.insert(cookie, rec, 0).is_err() {
                maps::count(counter::RECORDS_FULL);
                log::map_full("YOUNG", cookie);
            }
        }
    }
    if maps::control(control::ARMED) == 0 {
        maps::set_control(control::ARMED, 1);
        wake(old, new, start_ns);
    }
}

/// Every field of `rec` but the cookie (a slot may hold an older socket's).
#[inline(always)]
fn fill(sk: Sock, rec: &mut SockRecord, start_ns: u64) {
    rec.start_ns = start_ns;
    sk.fill_endpoints(rec);
    rec.cgroup = sk.cgroup_id();
    rec.flags = 0;
    rec.inode = 0;
    match sk.socket_inode() {
        Some(inode) => rec.inode = inode,
        None => rec.flags |= REC_UNACCEPTED,
    }
    rec.owner_tgid = 0;
    rec.owner_comm = [0; TASK_COMM_LEN];
    // Only a watched process's connect() left an owner.
    if maps::control(control::WATCHING) != 0
        && let Some(owner) = maps::owner_of(sk, false)
    {
        // SAFETY: storage of this socket, valid for this program run.
        let owner = unsafe { *owner };
        if owner.tgid != 0 && owner.flags & OWNER_CONNECT != 0 {
            rec.owner_tgid = owner.tgid;
            rec.owner_comm = owner.comm;
            rec.flags |= REC_OUTBOUND;
        }
    }
}

fn leave(sk: Sock, old: u32, new: u32) {
    maps::count(counter::CLOSED);
    let cookie = sk.cookie();
    if new != LAST_ACK && new != CLOSE {
        log::unexpected_state(cookie, old, new);
    }
    // SAFETY: a helper without arguments.
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    let released = sk.fd_released();
    let rec = match young(cookie, ts, released) {
        Young::Healthy => return, // closed within the grace
        Young::Left(rec) => rec,
        Young::Reported => reported_record(cookie, ts),
    };
    finish(sk, old, new, ts, rec, released);
}

/// What a socket leaving CLOSE_WAIT was.
enum Young {
    /// Young, closed by its last close(): the healthy path, nothing to say.
    Healthy,
    /// Young, left without its file being released (its record).
    Left(SockRecord),
    /// Not young: reported, or never seen entering.
    Reported,
}

/// Takes `cookie`'s young record, from its `NURSERY` slot (the common
/// path) or from `YOUNG`, adding its time in CLOSE_WAIT to the histogram.
/// The slot's record is read before the slot is freed and only kept if
/// freeing it succeeds: the cookie never changed meanwhile, so neither did
/// the record.
#[inline(always)]
fn young(cookie: u64, ts: u64, released: bool) -> Young {
    if let Some(slot) = maps::nursery_of(cookie) {
        // SAFETY: a NURSERY value, valid for this program run.
        let start_ns = unsafe { (*slot).start_ns };
        // Copied only when an event needs it (not on the healthy path).
        // SAFETY: as above; the copy is dropped unless the slot was ours.
        let rec = (!released).then(|| unsafe { *slot });
        if !maps::release(slot, cookie) {
            // The daemon took it first: its record is in CLOSE_WAIT.
            return Young::Reported;
        }
        maps::observe(ts.saturating_sub(start_ns));
        return rec.map_or(Young::Healthy, Young::Left);
    }
    // SAFETY: the record is copied out before its delete.
    match unsafe { YOUNG.get(cookie) }.copied() {
        // A failed delete: the daemon reported it meanwhile.
        Some(rec) if YOUNG.remove(cookie).is_ok() => {
            maps::observe(ts.saturating_sub(rec.start_ns));
            if released {
                Young::Healthy
            } else {
                Young::Left(rec)
            }
        }
        _ => Young::Reported,
    }
}

/// The record of a socket the daemon knows (from `CLOSE_WAIT`, deleted),
/// or a bare one: never seen entering (before cwatch, or `YOUNG` was full),
/// the daemon may know it from reconciliation.
#[inline(always)]
fn reported_record(cookie: u64, ts: u64) -> SockRecord {
    // SAFETY: the record is copied out before its delete.
    if let Some(rec) = unsafe { CLOSE_WAIT.get(cookie) } {
        let rec = *rec;
        let _ = CLOSE_WAIT.remove(cookie);
        if rec.start_ns != 0 && rec.flags & REC_ESTIMATED == 0 {
            maps::observe(ts.saturating_sub(rec.start_ns));
        }
        return rec;
    }
    let mut rec = SockRecord::zeroed();
    rec.cookie = cookie;
    rec
}

/// Tells the daemon about a socket that left: at once when its file was
/// released (the event says so), else it waits in `LINGER` for
/// `tcp_destroy_sock` (an fd may still hold it).
#[inline(always)]
fn finish(sk: Sock, old: u32, new: u32, ts: u64, mut rec: SockRecord, released: bool) {
    let cookie = rec.cookie;
    if released {
        rec.flags |= REC_RELEASED;
    }
    let event = event(EVENT_LEAVE, old, new, ts, rec);
    if released {
        submit(&event);
        return;
    }
    // Still held: wait for tcp_destroy_sock. Marked in the socket's storage
    // so that program tests one flag instead of hashing every destroyed
    // socket.
    match maps::owner_of(sk, true) {
        Some(owner) if LINGER.insert(cookie, event, 0).is_ok() => {
            // SAFETY: the socket's own storage, valid for this program run.
            unsafe { (*owner).flags |= OWNER_LINGER };
            maps::set_control(control::LINGERING, 1);
        }
        _ => {
            maps::count(counter::LINGER_FULL);
            log::map_full("LINGER", cookie);
        }
    }
    submit(&event);
}
