//! The soak (`cwatch_testkit::soak`) as a test: mixed churn in every shape,
//! a slowly growing leak that stops at a bound, batches of sockets tracked
//! then closed — and at the end the gauges equal `ss`, nothing was
//! corrected, nothing was lost. 60 s by default; `CWATCH_SOAK_SECS` sets the
//! length for the long run by hand (`CWATCH_SOAK_SECS=600 cargo xtask test
//! --kernel -- soak`). Correctness only: the figures (the RSS curve) are the
//! bench's (`cargo xtask bench --soak`).
use std::time::Duration;

use cwatch_testkit::{daemon::Daemon, load::load_bin, soak, workspace_binary};

use crate::common::serial;

/// The soak's length: `CWATCH_SOAK_SECS`, else 60 s.
fn length() -> Duration {
    match std::env::var("CWATCH_SOAK_SECS") {
        Ok(v) => Duration::from_secs(
            v.parse()
                .unwrap_or_else(|_| panic!("CWATCH_SOAK_SECS={v:?} is not a number of seconds")),
        ),
        Err(_) => Duration::from_secs(60),
    }
}

#[test]
fn soak_keeps_the_gauges_equal_to_ss_without_corrections() {
    let _serial = serial();
    let length = length();
    let daemon = Daemon::start(&["--leak-after", "2s", "--reconcile-interval", "2s"]).unwrap();
    let plan = soak::Plan {
        length,
        sample_every: Duration::from_secs(2),
        leak_steps: 10,
        leak_per_step: 20,
        batch: 100,
        burst: Duration::from_secs(1),
        load_bin: load_bin().unwrap(),
        churn_bin: workspace_binary("CWATCH_CHURN_BIN", "cwatch-churn").unwrap(),
    };
    let out = soak::run(&plan, daemon.pid, &|| daemon.metrics())
        .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", daemon.log()));
    let context = format!("{out:#?}\ndaemon log:\n{}", daemon.log());

    // The workload did what it says.
    assert_eq!(out.leak, 200, "{context}");
    assert_eq!(out.leak_ss, out.leak, "ss shows the whole leak: {context}");
    assert!(out.churn_conns > 1_000, "the churn ran: {context}");
    assert!(
        out.batches >= 3,
        "tracked-then-closed batches ran: {context}"
    );
    assert!(
        out.full_passes >= 1.0,
        "a full reconciliation pass ran during the soak (else no drift could show): {context}"
    );

    // The gauges equal the kernel's truth at the end, and never counted
    // more than the leak on the way.
    assert_eq!(out.leaked_gauge, out.leak as f64, "{context}");
    assert_eq!(out.close_wait_gauge, out.leak_ss as f64, "{context}");
    assert_eq!(
        out.batch_gauge, 0.0,
        "every batch's close was seen: {context}"
    );
    for s in &out.samples {
        assert!(
            s.close_wait_gauge <= s.leak as f64,
            "at {:.1} s the gauge counted {} of a {}-socket leak: {context}",
            s.t_s,
            s.close_wait_gauge,
            s.leak
        );
    }

    // No drift: reconciliation had nothing to fix, and no event was lost.
    assert_eq!(
        out.corrections_end, out.corrections_start,
        "corrections during the soak: {context}"
    );
    assert_eq!(out.events_lost, 0.0, "{context}");

    // Resident memory: a bound only a leak would cross. The soak's own
    // sockets need well under a MiB in the table; tens of thousands of
    // connections and hundreds of tracked-then-closed sockets went past a
    // daemon that keeps nothing of them. 32 MiB of growth after the
    // warm-up would be more than 100 B kept per churned connection, or
    // several KiB per tracked socket. Timing and the curve are the bench's.
    let growth = out.rss_growth_mib();
    assert!(
        growth < 32.0,
        "RSS grew {growth:.1} MiB after the warm-up: {context}"
    );
    drop(daemon);
}
