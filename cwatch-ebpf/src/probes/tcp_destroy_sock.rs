//! `tp_btf/tcp_destroy_sock`: the socket is gone. No record may outlive it.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel,
    maps::{CLOSE_WAIT, OWNERS},
};

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // Every record is keyed by a cookie we asked the kernel to make, and a
    // made cookie is stored in the socket: 0 means we never recorded it, so
    // the common case costs one read and no map lookup.
    let cookie = match kernel::cookie_if_made(sk) {
        Ok(0) | Err(_) => return 0,
        Ok(cookie) => cookie,
    };
    let _ = OWNERS.remove(cookie);
    let _ = CLOSE_WAIT.remove(cookie);
    0
}
