//! cwatch's own metrics on the real daemon: process CPU/RSS/fds, BPF program
//! run counts while the kernel counts them (enabled for this test only,
//! through BPF_ENABLE_STATS, which ends when its fd closes), map fill and
//! scrape duration.
use std::{os::fd::FromRawFd as _, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for};

use crate::common::serial;

/// Turns on kernel.bpf_stats_enabled while the returned fd is open.
fn enable_bpf_stats() -> std::os::fd::OwnedFd {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let attr = [0u32; 4]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_ENABLE_STATS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just gave us this fd.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

#[test]
fn self_metrics_report_process_programs_maps_and_scrapes() {
    let _serial = serial();
    let stats = enable_bpf_stats();
    let daemon = Daemon::start(&[]).unwrap();
    let port = crate::common::free_port_on(&["127.0.4.1"]);
    let inst = format!("127.0.4.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let client = Load::client("selfm", &[(inst.clone(), 5)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} 5"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    wait_for(
        "our 5 sockets in the table",
        Duration::from_secs(10),
        || {
            // Filtered by the daemon: the host may hold many other sockets.
            let (_, body) = daemon
                .get(&format!("/api/v1/sockets?peer={inst}"))
                .map_err(|e| e.to_string())?;
            let n = serde_json::from_str::<Vec<serde_json::Value>>(&body).map_or(0, |v| v.len());
            if n == 5 { Ok(()) } else { Err(format!("{n}")) }
        },
    )
    .unwrap();
    let m = wait_for("program runs counted", Duration::from_secs(10), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        match m.get(
            "cwatch_bpf_program_runs_total",
            &[("program", "inet_sock_set_state")],
        ) {
            Some(v) if v >= 10.0 => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    // The sysctl itself stays as it was: BPF_ENABLE_STATS does not show there.
    assert!(m.scalar("cwatch_bpf_stats_enabled").is_some());
    assert!(
        m.get(
            "cwatch_bpf_program_run_seconds_total",
            &[("program", "inet_sock_set_state")]
        )
        .unwrap()
            > 0.0
    );
    assert!(m.scalar("process_resident_memory_bytes").unwrap() > 1e6);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid))
        .unwrap()
        .count() as f64;
    let open = m.scalar("process_open_fds").unwrap();
    assert!(
        (open - fds).abs() <= 4.0,
        "process_open_fds {open} vs /proc {fds}"
    );
    assert!(m.scalar("process_cpu_seconds_total").is_some());
    let fill = m
        .get("cwatch_map_fill_ratio", &[("map", "close_wait")])
        .unwrap();
    assert!(fill > 0.0 && fill < 1.0, "{fill}");
    // The gauge tells how long the previous scrape took.
    let again = daemon.metrics().unwrap();
    assert!(again.scalar("cwatch_scrape_duration_seconds").unwrap() > 0.0);
    assert_eq!(
        m.get("cwatch_series_folded", &[("family", "process")]),
        Some(0.0)
    );
    drop(stats);
    drop((client, server));
}
