//! sd_notify against a real unix datagram socket given as NOTIFY_SOCKET, as
//! systemd does for `Type=notify`: READY=1 exactly when /healthz turns 200,
//! WATCHDOG=1 pings when WATCHDOG_USEC asks for them (and none when it does
//! not), STOPPING=1 on SIGTERM, then a clean exit.
use std::{os::unix::net::UnixDatagram, time::Duration};

use cwatch_testkit::daemon::Daemon;
use rustix::process::Signal;

use crate::common::{TempDir, serial};

/// The next datagram, or `None` after `timeout`.
fn next(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// Starts a daemon notifying `sock`; returns it once READY=1 arrived, with
/// /healthz checked at that moment, and every message seen until then.
fn start_notifying(dir: &TempDir, env: &[(&str, &str)]) -> (Daemon, UnixDatagram, Vec<String>) {
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let path = path.to_str().unwrap().to_string();
    let mut all_env = vec![("NOTIFY_SOCKET", path.as_str())];
    all_env.extend_from_slice(env);
    let daemon = Daemon::spawn_full(&[], &all_env, &[]).unwrap();
    let mut seen = Vec::new();
    loop {
        let msg = next(&sock, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no READY=1 within 60 s; log:\n{}", daemon.log()));
        let ready = has(&msg, "READY=1");
        seen.push(msg);
        if ready {
            break;
        }
    }
    // READY=1 is sent after the daemon reports ready, never before.
    let (status, body) = daemon.get("/healthz").unwrap();
    assert_eq!(
        status, 200,
        "READY=1 sent but /healthz says {status} {body}"
    );
    (daemon, sock, seen)
}

#[test]
fn ready_watchdog_and_stopping() {
    let _serial = serial();
    let dir = TempDir::new("notify");
    // 400 ms watchdog: a ping every 200 ms.
    let (daemon, sock, before) = start_notifying(&dir, &[("WATCHDOG_USEC", "400000")]);
    assert!(
        before.iter().all(|m| !has(m, "WATCHDOG=1")),
        "watchdog pings before READY: {before:?}"
    );
    let mut pings = 0;
    while pings < 3 {
        let msg = next(&sock, Duration::from_secs(10)).expect("watchdog ping");
        assert!(
            has(&msg, "WATCHDOG=1"),
            "unexpected message while running: {msg:?}"
        );
        pings += 1;
    }
    daemon.signal(Signal::TERM).unwrap();
    let stopping = loop {
        let msg = next(&sock, Duration::from_secs(10)).expect("STOPPING=1 after SIGTERM");
        if !has(&msg, "WATCHDOG=1") {
            break msg;
        }
    };
    assert!(has(&stopping, "STOPPING=1"), "{stopping:?}");
    let status = daemon.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn no_watchdog_unless_asked() {
    let _serial = serial();
    let dir = TempDir::new("notify-nowd");
    // WATCHDOG_PID naming another process means the watchdog is not ours.
    let (daemon, sock, before) =
        start_notifying(&dir, &[("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")]);
    assert!(before.iter().all(|m| !has(m, "WATCHDOG=1")));
    // Two watchdog periods pass; then the only message must be STOPPING=1.
    std::thread::sleep(Duration::from_millis(800));
    daemon.signal(Signal::TERM).unwrap();
    let msg = next(&sock, Duration::from_secs(10)).expect("STOPPING=1 after SIGTERM");
    assert!(
        has(&msg, "STOPPING=1") && !has(&msg, "WATCHDOG=1"),
        "{msg:?}"
    );
    let status = daemon.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "exit status {status}");
}
