//! The programs' log lines, through aya-log, on rare paths only: a map
//! full, a failed read, an unexpected state, a record that could not be
//! stored. Each statement is behind aya-log's `AYA_LOG_LEVEL`, which the
//! daemon sets at load from its own log level; it lands in frozen `.rodata`,
//! so the verifier removes every statement above it: a level that is off
//! costs nothing. The counters stay the source of truth; the daemon rate
//! limits these lines (`intake::kernel_log`).
//!
//! aya-log-ebpf 0.2 does not use the program context its macros take
//! (`let _ = ctx`), so these helpers pass a unit in its place and can be
//! called from any function.
use aya_log_ebpf::warn;

/// `map` (a name) refused the record of socket `cookie`.
#[inline(always)]
pub fn map_full(map: &str, cookie: u64) {
    warn!(
        &(),
        "{} full: socket {:x} not recorded (counted; reconciliation finds it)", map, cookie
    );
}

/// The event ring was full: an event of `kind` for socket `cookie` lost.
#[inline(always)]
pub fn event_lost(kind: u32, cookie: u64) {
    warn!(
        &(),
        "event ring full: event {} for socket {:x} lost (counted; reconciliation repairs it)",
        kind,
        cookie
    );
}

/// A kernel read the verifier could not make fault-tolerant failed.
#[inline(always)]
pub fn read_failed(what: &str, cookie: u64, err: i64) {
    warn!(
        &(),
        "reading {} of socket {:x} failed: {}", what, cookie, err
    );
}

/// A socket left CLOSE_WAIT for a state TCP does not go to from there.
#[inline(always)]
pub fn unexpected_state(cookie: u64, old: u32, new: u32) {
    warn!(
        &(),
        "socket {:x}: unexpected transition {} -> {}", cookie, old, new
    );
}
