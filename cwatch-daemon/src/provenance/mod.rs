/*!
Leak provenance, daemon side: once a socket is leaked, its connect-time
stack sample (taken by the kernel at SYN_SENT for watched processes, see
`cwatch_ebpf`'s `stack.rs`) is taken out of `SAMPLES` (freeing the kernel's
copy), unwound and symbolized with `cwatch_stacks`, and the result kept in
[`crate::sites`] by cookie.

All of it runs on one OS thread of its own (blazesym's symbolizer cannot
move between threads), created with the owners' capabilities (reading other
processes' `/proc/<pid>/maps` and binaries through `/proc/<pid>/root`). The
table is locked only to offer the sockets that turned leaked since the
last pass to a bounded queue ([`queue`]), of which at most [`BATCH`] are
looked at a pass; the unwinding is done after. A socket without a sample
(its process was not watched) costs one map lookup and no memory. Equal stacks (same call path through the same binaries) are
symbolized once and shared ([`Interned`]), so a thousand sockets leaked by
one function cost one stack and a map entry each.
*/
mod queue;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use cwatch_common::{STACK_BYTES, StackSample, control};
use cwatch_stacks::{Regs, Sample, Stacks, Trace};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use queue::Queue;

use crate::{probe::Probes, sites::Provenance, state::State};

/// How often leaked sockets are looked for.
pub const EVERY: Duration = Duration::from_secs(1);
/// Sockets looked at per pass, at most.
pub const BATCH: usize = 256;
/// Distinct stacks kept symbolized before the cache starts over.
pub const MAX_INTERNED: usize = 4096;

/// The provenance thread's work.
pub struct Task {
    pub state: Arc<State>,
    pub probes: Arc<Probes>,
    /// The proc root processes are read under (`/proc`).
    pub proc: PathBuf,
    /// Disconnected when the daemon stops: ends the wait between passes.
    pub stop: std::sync::mpsc::Receiver<()>,
}

/// The sample as `cwatch_stacks` takes it: registers and the bytes copied.
pub fn to_sample(s: &StackSample) -> Sample {
    let len = (s.len as usize).min(STACK_BYTES);
    Sample {
        pid: s.tgid,
        regs: Regs {
            ip: s.ip,
            sp: s.sp,
            bp: s.bp,
        },
        stack: s.stack[..len].to_vec(),
    }
}

/// Symbolized stacks by trace, bounded by [`MAX_INTERNED`].
#[derive(Default)]
pub struct Interned(HashMap<Trace, Arc<Provenance>>);

impl Interned {
    /// The provenance of `trace`, symbolized with `symbolize` the first time.
    pub fn get_or(
        &mut self,
        trace: Trace,
        symbolize: impl FnOnce(&Trace) -> cwatch_stacks::Stack,
    ) -> Arc<Provenance> {
        if let Some(p) = self.0.get(&trace) {
            return Arc::clone(p);
        }
        if self.0.len() >= MAX_INTERNED {
            self.0.clear();
        }
        let stack = symbolize(&trace);
        let p = Arc::new(Provenance {
            site: cwatch_stacks::site(&stack),
            stack,
        });
        self.0.insert(trace, Arc::clone(&p));
        p
    }
}

impl Task {
    /// Runs until `cancel` (blocking: call it on its own thread).
    pub fn run(self, cancel: CancellationToken) {
        let cfg = cwatch_stacks::Config {
            proc: cwatch_stacks::ProcFs::new(&self.proc),
            // map_files needs CAP_SYS_ADMIN, which this thread lacks; the
            // path in the process's root, checked against the mapped
            // inode, serves.
            map_files: false,
            ..cwatch_stacks::Config::default()
        };
        let mut stacks = Stacks::new(cfg);
        let mut interned = Interned::default();
        let mut queue = Queue::default();
        let mut stacks_word = None;
        while !cancel.is_cancelled() {
            let config = self.state.config();
            let want = u32::from(config.stack_samples > 0);
            if stacks_word != Some(want) && self.probes.set_control(control::STACKS, want).is_ok() {
                stacks_word = Some(want);
            }
            if want == 1 {
                self.pass(&mut queue, &mut stacks, &mut interned, config.leak_after);
            }
            // Until the next pass, or at once when the daemon stops (the
            // sender is dropped then).
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                self.stop.recv_timeout(EVERY)
            {
                return;
            }
        }
    }

    /// One pass: forget sockets no longer tracked, offer the ones that
    /// turned leaked since the last pass, then resolve up to [`BATCH`] of
    /// those waiting (a socket without a sample costs nothing more).
    fn pass(
        &self,
        queue: &mut Queue,
        stacks: &mut Stacks,
        interned: &mut Interned,
        leak_after: Duration,
    ) {
        let sites = &self.state.sites;
        let now = self.state.clock.now_ns();
        let frontier = now.saturating_sub(u64::try_from(leak_after.as_nanos()).unwrap_or(u64::MAX));
        // Until the kernel took a sample, no socket can have one.
        let sampled = self.probes.control(control::SAMPLED).unwrap_or(1) != 0;
        {
            let table = self.state.lock_table();
            sites.retain(|cookie| table.contains(cookie) || table.dead_entry(cookie).is_some());
            if sampled {
                queue.scan(table.keys().map(|(c, start, _)| (c, start)), frontier);
            } else {
                queue.skip_to(frontier);
            }
        }
        let started = std::time::Instant::now();
        let mut n = 0;
        while n < BATCH
            && let Some(cookie) = queue.pop()
        {
            n += 1;
            let Some(s) = self.probes.take_sample(cookie) else {
                continue; // not watched when it connected
            };
            let sample = to_sample(&s);
            drop(s);
            match stacks.unwind(&sample) {
                Ok(trace) => sites.set(cookie, interned.get_or(trace, |t| stacks.symbolize(t))),
                Err(err) => debug!(
                    cookie,
                    pid = sample.pid,
                    "unwinding a connect() stack: {err}"
                ),
            }
        }
        if n > 0 {
            debug!(
                sockets = n,
                waiting = queue.len(),
                dropped = queue.dropped,
                took_ms = started.elapsed().as_millis() as u64,
                "connect-time stacks of leaked sockets looked at"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_keeps_only_the_bytes_copied() {
        let mut s = Box::new(StackSample {
            tgid: 7,
            len: 3,
            ip: 1,
            sp: 2,
            bp: 3,
            stack: [0; STACK_BYTES],
        });
        s.stack[..4].copy_from_slice(&[9, 8, 7, 6]);
        let sample = to_sample(&s);
        assert_eq!(sample.pid, 7);
        assert_eq!(
            sample.regs,
            Regs {
                ip: 1,
                sp: 2,
                bp: 3
            }
        );
        assert_eq!(sample.stack, vec![9, 8, 7]);
        s.len = u32::MAX;
        assert_eq!(to_sample(&s).stack.len(), STACK_BYTES, "clamped");
    }
}
