/*!
Owner attribution: which processes hold each tracked socket, and under which
fd.

The kernel already names a process for most sockets at the transition (the
one that called connect(), or listen() for accepted sockets): the gauges use
it at once. This module finds the real holders from `/proc/<pid>/fd`
(`socket:[inode]`) on its own thread, without ever walking all of `/proc` per
event:

- a socket that stays in CLOSE_WAIT past [`GRACE`] is looked up in the fd
  tables of the kernel's candidate process and its descendants (prefork
  workers, forked children), once per pass however many sockets it holds,
  and no more often than keeps those scans under 1 % of the time
  ([`SCAN_BUDGET`]);
- a socket nothing points at (no owner stored at connect(), the root
  cgroup), or that its candidates do not hold, is looked for among the
  processes started since the last walk (a worker restarted, a new job);
- only sockets found nowhere (fds passed with SCM_RIGHTS to an older
  process, sockets that predate cwatch) trigger a walk of every process,
  within a CPU budget ([`WALK_BUDGET`], at least [`WALK_MIN_GAP`] apart);
  reconciliation asks for one walk per period, which also catches holders
  that appeared since;
- every `holders_refresh`, sockets held by several fds are re-checked with
  one `readlink` per holder, and new processes forked by a holder are
  scanned;
- a socket that left CLOSE_WAIT and is still not destroyed after [`DEAD_GRACE`]
  is checked: if an fd still holds it, it is a dead socket held (the kernel
  closed it, or it was shut down without close()).
*/
mod cgroups;
mod handle;
pub mod labels;
mod newprocs;
pub mod procfs;
mod refresh;
mod walk;
mod worker;

use std::{sync::Arc, time::Duration};

pub use handle::Handle;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use worker::Worker;

use crate::state::State;
pub use procfs::ProcRoot;

/// Sockets younger than this are left to the kernel's owner hint: many
/// CLOSE_WAIT sockets are closed within a millisecond or two.
pub const GRACE: Duration = Duration::from_millis(20);
/// A socket that left CLOSE_WAIT is checked for fds still holding it only
/// after this long: a socket closed normally is destroyed well before.
pub const DEAD_GRACE: Duration = Duration::from_secs(1);
/// How soon the worker looks again while some socket still waits for its
/// holders (its candidates over their scan budget, or a walk to come).
pub const TICK: Duration = Duration::from_millis(25);
/// Scanning a candidate's family is allowed to take this share of the
/// wall-clock time: after a scan that cost `d` of CPU time (the worker
/// thread's: a loaded host stretches the wall-clock time of a scan, not
/// its work), the next waits `d / share`.
/// A 25-fd process can be rescanned every tick; a server with 10,000 fds
/// (a scan of ~10 ms) about once a second.
pub const SCAN_BUDGET: u32 = 100;
/// A socket its candidates do not hold triggers a walk only once it has
/// been missing this long.
pub const MISS_PATIENCE: Duration = Duration::from_secs(1);
/// Walks of all of `/proc` asked for by lookups that failed take at most
/// this share of the time: after a walk that cost `d` of the worker
/// thread's CPU time, the next waits `d × WALK_BUDGET` (2 % of a core; a
/// walk of a few hundred processes costs tens of milliseconds, one of a
/// million sockets' fds seconds).
pub const WALK_BUDGET: u32 = 50;
/// Processes started since the last walk are scanned once each, when a
/// socket nothing names is looked for (their cost follows the processes
/// started, and these are where such leaks come from); scanning one again
/// (it made the fd after its scan) takes at most this share of the time
/// (10 %).
pub const NEW_SCAN_BUDGET: u32 = 10;
/// Walks asked for by lookups that failed are at least this far apart.
pub const WALK_MIN_GAP: Duration = Duration::from_millis(500);
/// At most this many processes of a candidate's family are scanned.
pub const FAMILY_LIMIT: usize = 256;

/// What the worker is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Scan every process (reconciliation, start-up), unless a walk began
    /// since `asked_ns` (the state's clock when asked): at start-up the
    /// worker's own lookup often walks first, and a second walk of a
    /// million fds would cost seconds for nothing.
    Walk { asked_ns: u64 },
    /// Sockets were added to the table (or left CLOSE_WAIT while held):
    /// look up their holders.
    Resolve,
}

/// The attribution worker: what it owns (the work queue, the proc root,
/// its caches) and what it shares (the state). Runs on a blocking thread
/// until `cancel`.
pub struct Attribution {
    worker: Worker,
    refresh_task: refresh::Refresh,
    work: std::sync::mpsc::Receiver<Work>,
    refresh: Duration,
}

impl Attribution {
    /// The worker and the handle that hands it work.
    pub fn new(state: Arc<State>, proc: ProcRoot) -> (Self, Handle) {
        let (tx, rx) = std::sync::mpsc::channel();
        let refresh = state.config().holders_refresh;
        let worker = Worker::new(state, proc);
        let task = Self {
            worker,
            refresh_task: refresh::Refresh::default(),
            work: rx,
            refresh,
        };
        (task, Handle::new(tx))
    }

    /// Looks up holders when there is work (sockets added, a walk asked
    /// for), again every [`TICK`] while some socket still waits, refreshes
    /// holders every `holders_refresh` while the table holds anything, and
    /// otherwise sleeps, until `cancel` (or every handle is gone).
    pub fn run(mut self, cancel: CancellationToken) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut next_refresh = self.worker.now() + self.refresh;
        while !cancel.is_cancelled() {
            let wait = if self.worker.has_pending() {
                Some(TICK)
            } else if self.worker.has_holders() {
                Some(next_refresh - self.worker.now())
            } else {
                None
            };
            let work = match wait {
                Some(timeout) => self.work.recv_timeout(timeout),
                None => self.work.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match work {
                Ok(Work::Walk { asked_ns }) => {
                    let asked = self.discard_queued(Some(asked_ns));
                    self.walk_unless_done(asked);
                }
                Ok(Work::Resolve) => {
                    let asked = self.discard_queued(None);
                    self.walk_unless_done(asked);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.worker.resolve_pending();
            if self.worker.now() >= next_refresh {
                if self.worker.has_holders() {
                    self.refresh_task.run(&mut self.worker);
                }
                next_refresh = self.worker.now() + self.refresh;
            }
            self.worker.forget_comms();
        }
    }

    /// Empties the queue: the latest ask for a walk among what it held
    /// (and `asked`).
    fn discard_queued(&self, mut asked: Option<u64>) -> Option<u64> {
        while let Ok(work) = self.work.try_recv() {
            if let Work::Walk { asked_ns } = work {
                asked = asked.max(Some(asked_ns));
            }
        }
        asked
    }

    /// Walks for an ask made at `asked_ns`, unless a walk began since.
    fn walk_unless_done(&mut self, asked_ns: Option<u64>) {
        let Some(asked_ns) = asked_ns else { return };
        if self.worker.walk_began.is_some_and(|t| t.ns() >= asked_ns) {
            debug!("a walk of /proc began after it was asked for: not walking again");
            return;
        }
        self.worker.walk();
    }
}

#[cfg(test)]
mod tests;
