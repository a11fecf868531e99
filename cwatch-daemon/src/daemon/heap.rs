/*!
What the daemon tells the C allocator (glibc malloc), so that resident memory
follows the live data rather than the peaks of periodic passes.

Reconciliation, the /proc walk and big scrapes build maps of every socket for
a moment, each on whichever thread runs it. With one malloc arena per thread
those peaks stay resident in every arena, and the long-lived entries
allocated among them keep the freed pages from going back. So: one arena
(the daemon's threads allocate little and rarely at the same time), a fixed
mmap threshold (glibc raises it after each large free, up to 32 MiB, and a
pass's big maps then land in the heap among long-lived entries), and the
free pages handed back to the kernel after each pass.
*/
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free heap pages are given back (a trim walks the free lists:
/// well under a millisecond when there is nothing to give back).
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Allocations from this size up get their own mapping, returned whole
/// when freed (glibc's default start, kept fixed).
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// One malloc arena for the whole process, and a fixed mmap threshold.
/// Call before threads start.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; M_ARENA_MAX and
    // M_MMAP_THRESHOLD are valid for glibc, and other C libraries return 0
    // (ignored).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
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
