//! Kernel tests: the real `cwatch` binary with its real probes, real sockets
//! on loopback (127.0.0.0/8 and ::1 only), ground truth from `ss` and /proc.
//!
//! They need root and run one at a time (every daemon sees every socket of
//! the host, and the counters they compare are host-wide): `cargo xtask test`.
//! They only look at what they created: their ports, pids and cookies.
mod abuse;
mod attribution;
mod auth_flood;
mod burst;
mod common;
mod crash;
mod dead;
mod drift;
mod failures;
mod fd_forecast;
mod fields;
mod incident;
mod instances;
mod ipv6;
mod lifecycle;
mod loss;
mod ls_unprivileged;
mod names;
mod operator_ls;
mod owner_labels;
mod persistence;
mod pins_access;
mod preflight;
mod prompt_close;
mod provenance;
mod reap;
mod restart;
mod self_metrics;
mod series_limits;
mod soak;
mod stop;
mod surprises;
mod unseen_leave;
mod web;
