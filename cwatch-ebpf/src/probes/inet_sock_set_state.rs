//! `tp_btf/inet_sock_set_state`: fired inside the kernel's tcp_set_state() for
//! every TCP state change. What a healthy connection costs is what this
//! program does on its common paths, so they do as little as they can:
//!
//! - into CLOSE_WAIT: the peer sent FIN (softirq context; the current task is
//!   not the owner). Count it and put a record in `YOUNG` (preallocated: no
//!   allocation); no event. Only the first socket after the daemon last
//!   looked sends one, a wake-up: the daemon then reports, after its grace,
//!   the sockets still in `YOUNG`.
//! - out of CLOSE_WAIT: the owner closed or shut it down (LAST_ACK) or the
//!   kernel reset it (CLOSE). Count it, add its duration to the histogram,
//!   delete its record. A socket still young (the daemon never reported it)
//!   that left by its last close() ends there, silently: the healthy path.
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
//! Every other transition returns after two loads and four compares.
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use cwatch_common::{
    EVENT_LEAVE, IPPROTO_TCP, Listener, ListenerKey, OWNER_CONNECT, OWNER_LINGER, OWNER_LISTEN,
    Owner, REC_ESTIMATED, REC_OUTBOUND, REC_RELEASED, REC_UNACCEPTED, SockRecord, control, counter,
    tcp_state,
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

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let old = ctx.arg::<i32>(1) as u32;
    let new = ctx.arg::<i32>(2) as u32;
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
    let mut rec = SockRecord::zeroed();
    rec.cookie = cookie;
    // SAFETY: a helper without arguments.
    rec.start_ns = unsafe { bpf_ktime_get_boot_ns() };
    sk.fill_endpoints(&mut rec);
    rec.cgroup = sk.cgroup_id();
    match sk.socket_inode() {
        Some(inode) => rec.inode = inode,
        None => rec.flags |= REC_UNACCEPTED,
    }
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
    if YOUNG.insert(cookie, rec, 0).is_err() {
        maps::count(counter::RECORDS_FULL);
        log::map_full("YOUNG", cookie);
    }
    if maps::control(control::ARMED) == 0 {
        maps::set_control(control::ARMED, 1);
        wake(old, new, rec.start_ns);
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
    // SAFETY (both lookups): the record is copied out before its delete.
    let (rec, reported) = if let Some(rec) = unsafe { YOUNG.get(cookie) } {
        let rec = *rec;
        let _ = YOUNG.remove(cookie);
        maps::observe(ts.saturating_sub(rec.start_ns));
        (rec, false)
    } else if let Some(rec) = unsafe { CLOSE_WAIT.get(cookie) } {
        let rec = *rec;
        let _ = CLOSE_WAIT.remove(cookie);
        if rec.start_ns != 0 && rec.flags & REC_ESTIMATED == 0 {
            maps::observe(ts.saturating_sub(rec.start_ns));
        }
        (rec, true)
    } else {
        // Never seen entering (before cwatch, or `YOUNG` was full): the
        // daemon may know it from reconciliation.
        let mut rec = SockRecord::zeroed();
        rec.cookie = cookie;
        (rec, true)
    };
    let released = sk.fd_released();
    if released && !reported {
        return; // closed within the grace: the healthy path
    }
    let mut event = event(EVENT_LEAVE, old, new, ts, rec);
    if released {
        event.rec.flags |= REC_RELEASED;
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
