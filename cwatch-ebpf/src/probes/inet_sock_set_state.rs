//! `tp_btf/inet_sock_set_state`: fired inside the kernel's tcp_set_state() for
//! every TCP state change.
//!
//! - into SYN_SENT: we are in connect(), i.e. in the owner's context; remember
//!   the owner for this socket cookie.
//! - into CLOSE_WAIT: the peer sent FIN (softirq context; the current task is
//!   not the owner). Start a record, count it, tell the daemon.
//! - out of CLOSE_WAIT: the owner closed or shut it down (LAST_ACK) or the
//!   kernel reset it (CLOSE). End the record, count it, tell the daemon.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use cwatch_common::{
    EVENT_ENTER, EVENT_LEAVE, Event, IPPROTO_TCP, Owner, REC_OUTBOUND, SockRecord, counter,
    tcp_state::{CLOSE_WAIT, SYN_SENT},
};

use aya_log_ebpf::warn;

use crate::{
    kernel,
    maps::{self, EVENTS, OWNERS},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let (old, new) = (oldstate as u32, newstate as u32);
    // The fast path: most transitions are none of ours.
    let entering = new == CLOSE_WAIT && old != CLOSE_WAIT;
    let leaving = old == CLOSE_WAIT && new != CLOSE_WAIT;
    if !(entering || leaving || new == SYN_SENT) {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    if kernel::protocol(sk)? != IPPROTO_TCP {
        return Ok(()); // MPTCP and SCTP fire the same tracepoint
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed `struct sock *`, which is
    // what the helper asks for.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.arg::<*mut core::ffi::c_void>(0)) };
    if new == SYN_SENT {
        remember_owner(cookie);
        Ok(())
    } else if entering {
        enter(ctx, sk, cookie, old, new);
        Ok(())
    } else {
        leave(cookie, old, new);
        Ok(())
    }
}

fn remember_owner(cookie: u64) {
    let owner = Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: kernel::leader_comm().unwrap_or([0; 16]),
    };
    if OWNERS.insert(cookie, owner, 0).is_err() {
        maps::count(counter::OWNERS_FULL);
    }
}

fn enter(ctx: &BtfTracePointContext, sk: *const u8, cookie: u64, old: u32, new: u32) {
    maps::count(counter::TRANSITIONS);
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    let mut rec = SockRecord::zeroed();
    rec.cookie = cookie;
    rec.start_ns = ts;
    if let Err(err) = kernel::fill_endpoints(sk, &mut rec) {
        // The record still counts; its addresses are incomplete.
        maps::count(counter::READ_ERRORS);
        warn!(
            ctx,
            "cookie {}: reading struct sock failed: {}", cookie, err
        );
    }
    // SAFETY: NO_PREALLOC map, the value is copied out at once.
    if let Some(owner) = unsafe { OWNERS.get(cookie) } {
        rec.owner_tgid = owner.tgid;
        rec.owner_comm = owner.comm;
        rec.flags |= REC_OUTBOUND;
        let _ = OWNERS.remove(cookie);
    }
    if maps::CLOSE_WAIT.insert(cookie, rec, 0).is_err() {
        maps::count(counter::RECORDS_FULL);
    }
    emit(EVENT_ENTER, old, new, ts, &rec);
}

fn leave(cookie: u64, old: u32, new: u32) {
    maps::count(counter::CLOSED);
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: copied out before the remove below.
    let rec = match unsafe { maps::CLOSE_WAIT.get(cookie) } {
        Some(rec) => *rec,
        None => {
            let mut rec = SockRecord::zeroed();
            rec.cookie = cookie;
            rec
        }
    };
    let _ = maps::CLOSE_WAIT.remove(cookie);
    emit(EVENT_LEAVE, old, new, ts, &rec);
}

#[inline(always)]
fn emit(kind: u32, old: u32, new: u32, ts: u64, rec: &SockRecord) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                kind,
                oldstate: old as u16,
                newstate: new as u16,
                ts_ns: ts,
                rec: *rec,
            });
            entry.submit(0);
        }
        None => maps::count(counter::EVENTS_LOST),
    }
}
