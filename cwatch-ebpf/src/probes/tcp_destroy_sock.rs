//! `tp_btf/tcp_destroy_sock`: fired when the kernel frees a TCP socket, i.e.
//! once no fd (and no timer) holds it any more.
//!
//! Only sockets that left CLOSE_WAIT with their file still held are of
//! interest: while there are none (`LINGERING` is 0) every socket costs one
//! array load; otherwise one storage lookup. For a marked one the `LINGER`
//! record ends and the daemon is told: whoever still held the dead socket's
//! fd has let go.
use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use cwatch_common::{EVENT_DESTROY, OWNER_LINGER, SockRecord, control, tcp_state};

use crate::{
    events::{event, submit},
    kernel::Sock,
    maps::{self, LINGER},
};

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    if maps::control(control::LINGERING) == 0 {
        return 0;
    }
    // SAFETY: the tracepoint's first argument is its BTF-typed `struct sock *`.
    let sk = unsafe { Sock::from_btf(ctx.arg(0)) };
    let Some(owner) = maps::owner_of(sk, false) else {
        return 0;
    };
    // SAFETY: storage of this socket, valid for this program run.
    if unsafe { (*owner).flags } & OWNER_LINGER == 0 {
        return 0;
    }
    let cookie = sk.cookie();
    // SAFETY: copied out before the remove below.
    let rec = match unsafe { LINGER.get(cookie) } {
        Some(event) => event.rec,
        None => {
            let mut rec = SockRecord::zeroed();
            rec.cookie = cookie;
            rec
        }
    };
    let _ = LINGER.remove(cookie);
    // SAFETY: a helper without arguments.
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    submit(&event(
        EVENT_DESTROY,
        tcp_state::CLOSE,
        tcp_state::CLOSE,
        ts,
        rec,
    ));
    0
}
