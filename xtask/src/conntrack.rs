//! Loopback traffic kept out of conntrack while the bench or the kernel
//! tests run on this machine. Where netfilter's
//! connection tracking is active (a NAT table, as podman's netavark leaves
//! behind, is enough), every loopback connection of the churn takes a
//! tracking entry that outlives it by minutes (TIME_WAIT: 120 s): at
//! 20,000 connections a second the table is full within seconds and the
//! kernel drops packets ("nf_conntrack: table full"), which measures the
//! firewall, not cwatch (and makes a test's connects time out) — a million
//! CLOSE_WAIT sockets could not even be made. So a table of its own marks
//! loopback packets `notrack` for the run; it is deleted at the end (on
//! drop, by the bench's signal handler, and by the next run if one was
//! killed). The deploy tests go without: podman's port mapping needs
//! conntrack on loopback.
use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The nftables table the bench adds.
const TABLE: &str = "cwatch_bench_notrack";

const RULES: &str = "table inet cwatch_bench_notrack {
    chain prerouting { type filter hook prerouting priority raw; iif \"lo\" notrack; }
    chain output { type filter hook output priority raw; oif \"lo\" notrack; }
}
";

/// The table, while it is there.
pub struct Untracked(());

impl Drop for Untracked {
    fn drop(&mut self) {
        remove();
    }
}

/// Whether connection tracking is loaded at all.
pub fn active() -> bool {
    Path::new("/proc/sys/net/netfilter/nf_conntrack_count").exists()
}

/// Adds the table when conntrack is active (`None` when it is not: nothing
/// to do). Fails when it is active and `nft` cannot add it: the churn
/// figures would be the firewall's.
pub fn untrack_loopback() -> anyhow::Result<Option<Untracked>> {
    remove();
    if !active() {
        return Ok(None);
    }
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("conntrack is active here and the bench needs nft (apt-get install -y nftables) to keep loopback out of it")?;
    nft.stdin
        .take()
        .context("nft's stdin")?
        .write_all(RULES.as_bytes())
        .context("writing the rules to nft")?;
    let status = nft.wait().context("waiting for nft")?;
    if !status.success() {
        bail!("nft could not add the table {TABLE} ({status})");
    }
    eprintln!(
        "xtask: conntrack is active: loopback packets are not tracked during the run (nft table {TABLE}, removed at the end)"
    );
    Ok(Some(Untracked(())))
}

/// Deletes the table if it is there (a killed run's, or this run's).
pub fn remove() {
    let listed = Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if listed {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", TABLE])
            .status();
    }
}
