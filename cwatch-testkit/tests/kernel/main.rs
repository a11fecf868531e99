//! Kernel tests: the real `cwatch` binary with its real probes, real sockets
//! on loopback (127.0.0.0/8 and ::1 only), ground truth from `ss` and /proc.
//!
//! They need root and run one at a time (every daemon sees every socket of
//! the host, and the counters they compare are host-wide): `cargo xtask test`.
//! They only look at what they created: their ports, pids and cookies.
mod attribution;
mod common;
mod dead;
mod drift;
mod fields;
mod incident;
mod ipv6;
mod lifecycle;
mod operator_ls;
mod owner_labels;
mod preflight;
mod prompt_close;
mod restart;
mod self_metrics;
mod series_limits;
mod soak;
mod web;
