//! Deploy tests: what an operator installs, against the real kernel and real
//! tools — sd_notify with a real socket, the daemon's capabilities, the
//! systemd unit, the alert rules (promtool), a real Prometheus scraping a
//! real cwatch during a leak (alerts and every dashboard query), the .deb
//! installed with dpkg, the Kubernetes manifests validated offline, the
//! container image checked as a file, imported by containerd and run by
//! podman against the kernel and a leak.
//!
//! Root, one at a time, through `cargo xtask test` (which installs the tools
//! through `cargo xtask setup`).
mod caps;
mod common;
mod image;
mod image_run;
mod kubernetes;
mod notify;
mod package;
mod pod;
mod prometheus;
mod promserver;
mod replay;
mod resources;
mod rules;
mod systemd;
