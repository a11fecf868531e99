//! CLOSE_WAIT sockets by the hundred thousand, or spread over thousands of
//! processes: `cwatch-hold` processes of at most [`MAX_PER_PROCESS`] sockets
//! each (RLIMIT_NOFILE is capped at 20,000 per process here, and each held
//! socket takes two descriptors: the CLOSE_WAIT client and its accepted end,
//! kept open in FIN_WAIT2 so that it is not an orphan the kernel would reset
//! past net.ipv4.tcp_max_orphans), each listening on its own 127.N.x.y
//! address so that each has a full ephemeral port range towards its
//! listener. Every holder is killed by pid when this is dropped, which
//! closes its sockets.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, ensure};

use super::procs::{Bins, Helper};

/// Sockets per holder at most: two descriptors each, under the 20,000
/// descriptor cap with room to spare.
pub const MAX_PER_PROCESS: usize = 9_500;

pub struct Holders {
    procs: Vec<Helper>,
    pub total: usize,
    /// Second octet of the holders' listen addresses (127.N.0.0/16).
    net: u8,
    per_process: usize,
    /// Holders being filled at once.
    parallel: usize,
}

impl Holders {
    /// Holders of `per_process` sockets each, listening in 127.`net`/16,
    /// started `parallel` at a time.
    pub fn new(net: u8, per_process: usize, parallel: usize) -> anyhow::Result<Holders> {
        ensure!(
            (1..=MAX_PER_PROCESS).contains(&per_process),
            "{per_process} sockets per holder: between 1 and {MAX_PER_PROCESS}"
        );
        Ok(Holders {
            procs: Vec::new(),
            total: 0,
            net,
            per_process,
            parallel: parallel.max(1),
        })
    }

    /// Where the holders listen: their sockets' peers are in this network.
    pub fn network(&self) -> String {
        format!("127.{}.0.0/16", self.net)
    }

    /// Adds holders until `target` sockets are held in all.
    pub fn grow_to(&mut self, bins: &Bins, target: usize) -> anyhow::Result<()> {
        while self.total < target {
            let mut starting = Vec::new();
            while starting.len() < self.parallel && self.total < target {
                let count = self.per_process.min(target - self.total);
                let n = self.procs.len() + starting.len();
                ensure!(
                    n < 250 * 256,
                    "more holders than addresses in 127.{}/16",
                    self.net
                );
                let listen = format!("127.{}.{}.{}:0", self.net, n / 250, n % 250 + 1);
                let helper = Helper::spawn(
                    Command::new(&bins.hold).args([
                        "--listen",
                        &listen,
                        "--count",
                        &count.to_string(),
                    ]),
                    &format!("cwatch-hold --listen {listen} --count {count}"),
                )?;
                starting.push(helper);
                self.total += count;
            }
            for mut helper in starting {
                helper
                    .expect("holding", Duration::from_secs(600))
                    .context("a CLOSE_WAIT holder did not finish")?;
                self.procs.push(helper);
            }
            if self.per_process >= 1_000 || self.procs.len().is_multiple_of(500) {
                eprintln!(
                    "bench: holding {} CLOSE_WAIT sockets in {} processes",
                    self.total,
                    self.procs.len()
                );
            }
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Helper::pid).collect()
    }
}
