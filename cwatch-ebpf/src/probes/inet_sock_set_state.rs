//! `tp_btf/inet_sock_set_state`: fired inside the kernel's tcp_set_state() for
//! every TCP state change.
//!
//! - into SYN_SENT: we are in connect(), i.e. in the owner's context; remember
//!   the owner in the socket's own storage.
//! - into LISTEN: we are in listen(); remember the listener's owner by port
//!   in `LISTENERS` (LISTEN → CLOSE: forget it). Sockets the listener accepts
//!   look their owner hint up there when they enter CLOSE_WAIT, so accepting
//!   a connection costs nothing.
//! - into CLOSE_WAIT: the peer sent FIN (softirq context; the current task is
//!   not the owner). Start a record, count it, tell the daemon.
//! - out of CLOSE_WAIT: the owner closed or shut it down (LAST_ACK) or the
//!   kernel reset it (CLOSE). End the record, count it, tell the daemon. Only
//!   when no close() released its file (reset, keepalive, `ss -K`, shutdown)
//!   is the record kept in `LINGER` until `tcp_destroy_sock`: an fd still
//!   holds the socket, a leaked fd. A plain close() costs no more than that.
//!
//! Every other transition returns after two loads and four compares.
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use cwatch_common::{
    EVENT_ENTER, EVENT_LEAVE, IPPROTO_TCP, Listener, ListenerKey, OWNER_CONNECT, OWNER_LINGER,
    OWNER_LISTEN, Owner, REC_INBOUND, REC_OUTBOUND, REC_RELEASED, REC_UNACCEPTED, SockRecord,
    counter, tcp_state,
};

use crate::{
    events::{event, submit},
    kernel::{self, Sock},
    maps::{self, CLOSE_WAIT, LINGER, LISTENERS},
};

const STATE_CLOSE_WAIT: u32 = tcp_state::CLOSE_WAIT;
const LISTEN: u32 = tcp_state::LISTEN;
const SYN_SENT: u32 = tcp_state::SYN_SENT;
const CLOSE: u32 = tcp_state::CLOSE;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let old = ctx.arg::<i32>(1) as u32;
    let new = ctx.arg::<i32>(2) as u32;
    let entering = new == STATE_CLOSE_WAIT && old != STATE_CLOSE_WAIT;
    let leaving = old == STATE_CLOSE_WAIT && new != STATE_CLOSE_WAIT;
    let owned_here = new == SYN_SENT || new == LISTEN;
    // A listener leaves LISTEN only for CLOSE (close, shutdown, disconnect).
    // LISTEN → SYN_RECV is a child being cloned from it: up to at least
    // 6.12 the child still carries the listener's cookie at that point
    // (inet_csk_clone_lock sets its own after the state change), so it
    // would pass for the listener and forget it.
    let unlistened = old == LISTEN && new == CLOSE;
    if !(entering || leaving || owned_here || unlistened) {
        return 0;
    }
    // SAFETY: the tracepoint's first argument is its BTF-typed `struct sock *`.
    let sk = unsafe { Sock::from_btf(ctx.arg(0)) };
    if sk.protocol() != IPPROTO_TCP {
        return 0; // MPTCP and SCTP fire the same tracepoint
    }
    if new == SYN_SENT {
        remember_owner(sk);
        return 0;
    }
    if new == LISTEN || unlistened {
        listener(sk, sk.cookie(), new == LISTEN);
        return 0;
    }
    let cookie = sk.cookie();
    if entering {
        enter(sk, cookie, old, new);
    } else {
        leave(sk, cookie, old, new);
    }
    0
}

fn remember_owner(sk: Sock) {
    match maps::owner_of(sk, true) {
        // SAFETY: the socket's own storage, valid for this program run.
        Some(owner) => unsafe {
            (*owner).tgid = kernel::current_tgid();
            (*owner).flags = OWNER_CONNECT;
            (*owner).comm = kernel::leader_comm();
        },
        None => maps::count(counter::OWNERS_FULL),
    }
}

fn listener_key(sk: Sock) -> ListenerKey {
    ListenerKey {
        netns: sk.netns(),
        port: sk.local_port(),
        _pad: 0,
    }
}

/// listen() (`listening`) or the listener's close: remember or forget who
/// listens on the port. A listener that closes forgets only its own entry.
fn listener(sk: Sock, cookie: u64, listening: bool) {
    let key = listener_key(sk);
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
        }
    // SAFETY: the value is only read, at once.
    } else if let Some(known) = unsafe { LISTENERS.get(key) }
        && known.cookie == cookie
    {
        let _ = LISTENERS.remove(key);
    }
}

/// The owner hint of a socket entering CLOSE_WAIT, with its direction flag:
/// the connect()er from its storage, else the listener of its local port.
fn owner_hint(sk: Sock) -> Option<(Owner, u16)> {
    if let Some(owner) = maps::owner_of(sk, false) {
        // SAFETY: storage of this socket, valid for this program run.
        let owner = unsafe { *owner };
        if owner.tgid != 0 && owner.flags & OWNER_CONNECT != 0 {
            return Some((owner, REC_OUTBOUND));
        }
    }
    // SAFETY: copied out at once.
    let listener = unsafe { LISTENERS.get(listener_key(sk)) }?;
    Some((listener.owner, REC_INBOUND))
}

fn enter(sk: Sock, cookie: u64, old: u32, new: u32) {
    maps::count(counter::TRANSITIONS);
    // SAFETY: a helper without arguments.
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    let mut rec = SockRecord::zeroed();
    rec.cookie = cookie;
    rec.start_ns = ts;
    sk.fill_endpoints(&mut rec);
    match sk.socket_inode() {
        Some(inode) => rec.inode = inode,
        None => rec.flags |= REC_UNACCEPTED,
    }
    if let Some((owner, direction)) = owner_hint(sk) {
        rec.owner_tgid = owner.tgid;
        rec.owner_comm = owner.comm;
        rec.flags |= direction;
    }
    if CLOSE_WAIT.insert(cookie, rec, 0).is_err() {
        maps::count(counter::RECORDS_FULL);
    }
    submit(&event(EVENT_ENTER, old, new, ts, rec));
}

fn leave(sk: Sock, cookie: u64, old: u32, new: u32) {
    maps::count(counter::CLOSED);
    // SAFETY: a helper without arguments.
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: copied out before the remove below.
    let rec = match unsafe { CLOSE_WAIT.get(cookie) } {
        Some(rec) => *rec,
        None => {
            let mut rec = SockRecord::zeroed();
            rec.cookie = cookie;
            rec
        }
    };
    let _ = CLOSE_WAIT.remove(cookie);
    let mut event = event(EVENT_LEAVE, old, new, ts, rec);
    if sk.fd_released() {
        event.rec.flags |= REC_RELEASED;
        submit(&event);
        return;
    }
    // Still held: wait for tcp_destroy_sock. Marked in the socket's storage
    // so that program tests one flag instead of hashing every destroyed
    // socket.
    match maps::owner_of(sk, true) {
        // SAFETY: the socket's own storage, valid for this program run.
        Some(owner) if LINGER.insert(cookie, event, 0).is_ok() => unsafe {
            (*owner).flags |= OWNER_LINGER;
        },
        _ => maps::count(counter::LINGER_FULL),
    }
    submit(&event);
}
