/*!
What the daemon tells the C allocator (glibc malloc), so that resident memory
follows the live data rather than the peaks of periodic passes.

Reconciliation, the /proc walk and big scrapes build maps of every socket for
a moment, each on whichever thread runs it. With one malloc arena per thread
those peaks stay resident in every arena, and the long-lived entries
allocated among them keep the freed pages from going back. So: one arena
(the daemon's threads allocate little and rarely at the same time), and the
free pages handed back to the kernel after each pass.
*/
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free heap pages are given back (a trim walks the free lists:
/// well under a millisecond when there is nothing to give back).
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// One malloc arena for the whole process. Call before threads start.
pub fn single_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX is
    // valid for glibc, and other C libraries return 0 (ignored).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives free pages of every arena back to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory malloc does not use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_EVERY`] until `cancel`.
pub async fn run(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}
