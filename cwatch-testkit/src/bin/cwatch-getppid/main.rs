//! `cwatch-getppid`: calls getppid(2) in a tight loop for a while and prints
//! the rate. getppid does no work in the kernel, so the rate shows the
//! per-syscall tax of whatever is attached to the syscall entry path (any
//! `syscalls:sys_enter_*` tracepoint turns on the tracing slow path for every
//! syscall of every task). Output: one line `calls N secs S rate R cpu_ns C`,
//! C being this process's CPU time (user + system) per call: unlike the rate,
//! it hardly moves when other work on the machine takes CPU away from us.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cwatch-getppid", version)]
struct Cli {
    /// How long to loop, in seconds (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

/// Calls between two clock reads: small against the run, large against the
/// cost of reading the clock.
const CHUNK: u64 = 4096;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(length) = Duration::try_from_secs_f64(cli.seconds) else {
        eprintln!("cwatch-getppid: error: --seconds must be a positive number");
        return ExitCode::from(2);
    };
    let cpu_start = cpu_ns();
    let started = Instant::now();
    let mut calls: u64 = 0;
    let mut sink: i64 = 0;
    while started.elapsed() < length {
        for _ in 0..CHUNK {
            sink ^= rustix::process::getppid().map_or(0, |p| i64::from(p.as_raw_nonzero().get()));
        }
        calls += CHUNK;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_ns() - cpu_start;
    std::hint::black_box(sink);
    println!(
        "calls {calls} secs {secs:.6} rate {:.1} cpu_ns {:.2}",
        calls as f64 / secs,
        cpu / calls as f64
    );
    ExitCode::SUCCESS
}

/// CPU time of this process (user + system), in nanoseconds.
fn cpu_ns() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}
