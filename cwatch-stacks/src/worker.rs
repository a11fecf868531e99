/*!
[`Worker`]: a [`Stacks`] on a thread of its own, behind a handle that is
`Send + Sync` (blazesym's symbolizer is neither, so the engine cannot move
between threads or sit in a shared lock). Calls block until the worker
answers; from async code, call them from a blocking task.
*/
use std::{
    sync::mpsc::{self, Sender, SyncSender},
    thread::JoinHandle,
};

use crate::{Config, Error, Sample, Stack, Stacks, Stats, Trace};

enum Job {
    Unwind(Sample, SyncSender<Result<Trace, Error>>),
    Symbolize(Trace, SyncSender<Stack>),
    Stats(SyncSender<Stats>),
    Forget(u32),
}

/// A handle to a [`Stacks`] running on its own thread. Dropping it stops
/// the thread.
#[derive(Debug)]
pub struct Worker {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread (named `cwatch-stacks`).
    pub fn spawn(cfg: Config) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("cwatch-stacks".into())
            .spawn(move || {
                let mut stacks = Stacks::new(cfg);
                // A caller that stopped waiting is no error.
                for job in rx {
                    match job {
                        Job::Unwind(sample, reply) => {
                            let _ = reply.send(stacks.unwind(&sample));
                        }
                        Job::Symbolize(trace, reply) => {
                            let _ = reply.send(stacks.symbolize(&trace));
                        }
                        Job::Stats(reply) => {
                            let _ = reply.send(stacks.stats());
                        }
                        Job::Forget(pid) => stacks.forget_process(pid),
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    fn ask<T>(&self, job: impl FnOnce(SyncSender<T>) -> Job) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs.as_ref()?.send(job(tx)).ok()?;
        rx.recv().ok()
    }

    /// [`Stacks::unwind`] on the worker.
    pub fn unwind(&self, sample: Sample) -> Result<Trace, Error> {
        self.ask(|r| Job::Unwind(sample, r))
            .unwrap_or(Err(Error::WorkerGone))
    }

    /// [`Stacks::symbolize`] on the worker; `None` if the worker is gone.
    pub fn symbolize(&self, trace: Trace) -> Option<Stack> {
        self.ask(|r| Job::Symbolize(trace, r))
    }

    pub fn stats(&self) -> Option<Stats> {
        self.ask(Job::Stats)
    }

    pub fn forget_process(&self, pid: u32) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Forget(pid));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_its_thread_and_can_be_shared() {
        fn shared<T: Send + Sync>() {}
        shared::<Worker>();
        let w = Worker::spawn(Config::default()).unwrap();
        // Our own process: a sample with our registers' worth of nothing
        // still unwinds to a one-frame trace (the ip), and names nothing
        // wrongly.
        let sample = Sample {
            pid: std::process::id(),
            regs: crate::Regs {
                ip: answers_from_its_thread_and_can_be_shared as *const () as u64,
                sp: 0x1000,
                bp: 0,
            },
            stack: Vec::new(),
        };
        let trace = w.unwind(sample).unwrap();
        assert_eq!(trace.frames().len(), 1);
        assert!(trace.partial());
        let stack = w.symbolize(trace).unwrap();
        assert!(
            stack.frames[0]
                .symbol
                .as_deref()
                .unwrap()
                .ends_with("answers_from_its_thread_and_can_be_shared")
        );
        assert_eq!(w.stats().unwrap().processes, 1);
        w.forget_process(std::process::id());
        assert_eq!(w.stats().unwrap().processes, 0);
    }
}
