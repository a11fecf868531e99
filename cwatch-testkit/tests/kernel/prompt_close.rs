//! A process that closes promptly on FIN never shows as leaked, even with a
//! short leak-after, while a leaking one beside it does: the test watches
//! /metrics continuously through the whole window.
use std::time::{Duration, Instant};

use cwatch_testkit::{daemon::Daemon, load::Load, wait_for};

use crate::common::{free_port_on, serial};

#[test]
fn prompt_closer_is_never_leaked() {
    let _serial = serial();
    const N: usize = 200;
    let port = free_port_on(&["127.0.2.1"]);
    let inst = format!("127.0.2.1:{port}");
    let daemon = Daemon::start(&["--leak-after", "500ms"]).unwrap();
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let prompt = Load::client("prompt-closer", &[(inst.clone(), N)], "close").unwrap();
    let leaky = Load::client("slow-leaker", &[(inst.clone(), N)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} {}", 2 * N), "accepted")
        .unwrap();
    let before = daemon.metrics().unwrap();
    let closed0 = before.scalar("cwatch_close_wait_closed_total").unwrap();
    let fast0 = before
        .get(
            "cwatch_close_wait_duration_seconds_bucket",
            &[("le", "0.1")],
        )
        .unwrap();

    server.ask(&format!("close {inst}"), "closed").unwrap();
    let (prompt_pid, leaky_pid) = (prompt.pid.to_string(), leaky.pid.to_string());
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut scrapes = 0;
    let mut leaky_flagged = false;
    while Instant::now() < deadline {
        let m = daemon.metrics().unwrap();
        scrapes += 1;
        for s in m.find("cwatch_process_leaked_sockets", &[("pid", &prompt_pid)]) {
            assert_eq!(
                s.value, 0.0,
                "the prompt closer was reported leaked:\n{}",
                m.text
            );
        }
        leaky_flagged |= m.get(
            "cwatch_process_leaked_sockets",
            &[("pid", &leaky_pid), ("comm", "slow-leaker")],
        ) == Some(N as f64);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(scrapes > 20, "only {scrapes} scrapes in the window");
    assert!(
        leaky_flagged,
        "the leaking neighbour never showed as leaked: the test could not have failed"
    );

    // Its sockets closed within 100 ms of the FIN, as the histogram says.
    let m = wait_for("prompt closes counted", Duration::from_secs(2), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        let closed = m.scalar("cwatch_close_wait_closed_total").unwrap_or(0.0);
        if closed >= closed0 + N as f64 {
            Ok(m)
        } else {
            Err(format!("closed {closed}"))
        }
    })
    .unwrap();
    assert_eq!(
        m.scalar("cwatch_close_wait_closed_total"),
        Some(closed0 + N as f64)
    );
    assert_eq!(
        m.get(
            "cwatch_close_wait_duration_seconds_bucket",
            &[("le", "0.1")]
        ),
        Some(fast0 + N as f64),
        "every prompt close took < 100 ms"
    );
    assert_eq!(
        m.find("cwatch_process_close_wait_sockets", &[("pid", &prompt_pid)])
            .count(),
        0
    );
}
