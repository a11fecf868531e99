//! CLOSE_WAIT sockets by the hundred thousand: `cwatch-hold` processes of at
//! most [`PER_PROCESS`] sockets each (RLIMIT_NOFILE is capped at 20,000 per
//! process here, and each held socket takes two descriptors: the CLOSE_WAIT
//! client and its accepted end, kept open in FIN_WAIT2 so that it is not an
//! orphan the kernel would reset past net.ipv4.tcp_max_orphans), each listening on its own 127.100.x.y address so that each
//! has a full ephemeral port range towards its listener. Every holder is
//! killed by pid when this is dropped, which closes its sockets.
use std::{process::Command, time::Duration};

use anyhow::Context as _;

use super::procs::{Bins, Helper};

/// Where the holders listen: their sockets' peers are in this network.
pub const NETWORK: &str = "127.100.0.0/16";

/// Sockets per holder: two descriptors each, under the 20,000 descriptor
/// cap with room to spare.
pub const PER_PROCESS: usize = 9_500;
/// Holders being filled at once (two CPUs).
const PARALLEL: usize = 2;

#[derive(Default)]
pub struct Holders {
    procs: Vec<Helper>,
    pub total: usize,
}

impl Holders {
    /// Adds holders until `target` sockets are held in all.
    pub fn grow_to(&mut self, bins: &Bins, target: usize) -> anyhow::Result<()> {
        while self.total < target {
            let mut starting = Vec::new();
            while starting.len() < PARALLEL && self.total < target {
                let count = PER_PROCESS.min(target - self.total);
                let n = self.procs.len() + starting.len();
                let listen = format!("127.100.{}.{}:0", n / 250, n % 250 + 1);
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
            eprintln!("bench: holding {} CLOSE_WAIT sockets", self.total);
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Helper::pid).collect()
    }
}
