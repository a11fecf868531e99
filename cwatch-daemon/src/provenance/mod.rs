/*!
Leak provenance, daemon side: once a socket is leaked, its connect-time
stack sample (taken by the kernel at SYN_SENT for watched processes, see
`cwatch_ebpf`'s `stack.rs`) is taken out of `SAMPLES` (freeing the kernel's
copy), unwound and symbolized with `cwatch_stacks`, and the result kept in
[`crate::sites`] by cookie.

All of it runs on one OS thread of its own (blazesym's symbolizer cannot
move between threads), created with the owners' capabilities (reading other
processes' `/proc/<pid>/maps` and binaries through `/proc/<pid>/root`). The
table is locked only to copy out the cookies of leaked sockets not looked at
yet, at most [`BATCH`] a pass (the bounded queue); the unwinding is done
after. Equal stacks (same call path through the same binaries) are
symbolized once and shared ([`Interned`]), so a thousand sockets leaked by
one function cost one stack and a map entry each.
*/
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use cwatch_common::{STACK_BYTES, StackSample, control};
use cwatch_stacks::{Regs, Sample, Stacks, Trace};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    probe::Probes,
    sites::Provenance,
    state::State,
    table::{age, is_leaked},
};

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
        let mut stacks_word = None;
        while !cancel.is_cancelled() {
            let config = self.state.config();
            let want = u32::from(config.stack_samples > 0);
            if stacks_word != Some(want) && self.probes.set_control(control::STACKS, want).is_ok() {
                stacks_word = Some(want);
            }
            if want == 1 {
                self.pass(&mut stacks, &mut interned, config.leak_after);
            }
            // Sleep in short steps so shutdown is not held up.
            let mut slept = Duration::ZERO;
            while slept < EVERY && !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(100));
                slept += Duration::from_millis(100);
            }
        }
    }

    /// One pass: forget sockets no longer tracked, then resolve up to
    /// [`BATCH`] leaked ones not looked at yet.
    fn pass(&self, stacks: &mut Stacks, interned: &mut Interned, leak_after: Duration) {
        let sites = &self.state.sites;
        let now = self.state.clock.now_ns();
        let (fresh, live) = {
            let table = self.state.lock_table();
            let mut live = HashSet::with_capacity(table.len() + table.dead_len());
            let mut fresh = Vec::new();
            for (cookie, start_ns, _) in table.keys() {
                live.insert(cookie);
                if fresh.len() < BATCH
                    && is_leaked(age(now, start_ns), leak_after)
                    && !sites.seen(cookie)
                {
                    fresh.push(cookie);
                }
            }
            for dead in table.dead() {
                live.insert(dead.sock.cookie);
            }
            (fresh, live)
        };
        sites.retain(&live);
        let started = std::time::Instant::now();
        let n = fresh.len();
        for cookie in fresh {
            let provenance = self.probes.take_sample(cookie).and_then(|s| {
                let sample = to_sample(&s);
                drop(s);
                match stacks.unwind(&sample) {
                    Ok(trace) => Some(interned.get_or(trace, |t| stacks.symbolize(t))),
                    Err(err) => {
                        debug!(
                            cookie,
                            pid = sample.pid,
                            "unwinding a connect() stack: {err}"
                        );
                        None
                    }
                }
            });
            sites.set(cookie, provenance);
        }
        if n > 0 {
            debug!(
                sockets = n,
                took_ms = started.elapsed().as_millis() as u64,
                "connect-time stacks of leaked sockets resolved"
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
