//! `tp_btf/inet_sock_set_state`: fired inside the kernel's tcp_set_state() for
//! every TCP state change.
//!
//! - into SYN_SENT: we are in connect(), i.e. in the owner's context; remember
//!   the owner in the socket's own storage.
//! - into CLOSE_WAIT: the peer sent FIN (softirq context; the current task is
//!   not the owner). Start a record, count it, tell the daemon.
//! - out of CLOSE_WAIT: the owner closed or shut it down (LAST_ACK) or the
//!   kernel reset it (CLOSE). End the record, count it, tell the daemon.
//!
//! Every other transition returns after two loads and three compares.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use cwatch_common::{
    EVENT_ENTER, EVENT_LEAVE, Event, IPPROTO_TCP, REC_OUTBOUND, SockRecord, counter,
    tcp_state::{CLOSE_WAIT, SYN_SENT},
};

use crate::{
    kernel,
    maps::{self, CLOSE_WAIT as RECORDS, EVENTS},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let old = ctx.arg::<i32>(1) as u32;
    let new = ctx.arg::<i32>(2) as u32;
    let entering = new == CLOSE_WAIT && old != CLOSE_WAIT;
    let leaving = old == CLOSE_WAIT && new != CLOSE_WAIT;
    if !(entering || leaving || new == SYN_SENT) {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if kernel::protocol(sk.cast()) != IPPROTO_TCP {
        return 0; // MPTCP and SCTP fire the same tracepoint
    }
    if new == SYN_SENT {
        remember_owner(sk);
        return 0;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *`.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if entering {
        enter(sk, cookie, old, new);
    } else {
        leave(cookie, old, new);
    }
    0
}

fn remember_owner(sk: *mut c_void) {
    match maps::owner_of(sk, true) {
        Some(owner) => unsafe {
            (*owner).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            (*owner).comm = kernel::leader_comm();
        },
        None => maps::count(counter::OWNERS_FULL),
    }
}

fn enter(sk: *mut c_void, cookie: u64, old: u32, new: u32) {
    maps::count(counter::TRANSITIONS);
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    let mut rec = SockRecord::zeroed();
    rec.cookie = cookie;
    rec.start_ns = ts;
    kernel::fill_endpoints(sk.cast(), &mut rec);
    if let Some(owner) = maps::owner_of(sk, false) {
        // SAFETY: storage of this socket, valid for this program run.
        let owner = unsafe { *owner };
        if owner.tgid != 0 {
            rec.owner_tgid = owner.tgid;
            rec.owner_comm = owner.comm;
            rec.flags |= REC_OUTBOUND;
        }
    }
    if RECORDS.insert(cookie, rec, 0).is_err() {
        maps::count(counter::RECORDS_FULL);
    }
    emit(EVENT_ENTER, old, new, ts, &rec);
}

fn leave(cookie: u64, old: u32, new: u32) {
    maps::count(counter::CLOSED);
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: copied out before the remove below.
    let rec = match unsafe { RECORDS.get(cookie) } {
        Some(rec) => *rec,
        None => {
            let mut rec = SockRecord::zeroed();
            rec.cookie = cookie;
            rec
        }
    };
    let _ = RECORDS.remove(cookie);
    emit(EVENT_LEAVE, old, new, ts, &rec);
}

/// Wake the daemon only once this much is waiting. Waking it per event costs
/// an inter-processor interrupt per event (a VM exit on virtual machines,
/// microseconds each); the daemon also drains the ring on a short timer, so a
/// quiet trickle of events still shows within its poll period.
const WAKEUP_BYTES: u64 = 256 << 10;

#[inline(always)]
fn emit(kind: u32, old: u32, new: u32, ts: u64, rec: &SockRecord) {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                kind,
                oldstate: old as u16,
                newstate: new as u16,
                ts_ns: ts,
                rec: *rec,
            });
            let waiting = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
            let flags = if waiting >= WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(u64::from(flags));
        }
        None => maps::count(counter::EVENTS_LOST),
    }
}
