//! A young record that outlives its socket (its way out of CLOSE_WAIT went
//! unseen: found in the soak, about one in five million churned loopback
//! connections on 6.18, where neither `inet_sock_set_state` nor
//! `tcp_destroy_sock` fired for it, bpftrace's own programs included) must
//! not become a tracked socket: the young scanner asks the kernel about each
//! socket it reports and drops, and counts, those already gone. Without that
//! the ghost stays in every gauge until the next full pass (with the
//! defaults, up to ten minutes, long enough to page as a leak).
//!
//! The ghost is made by hand: a `YOUNG` record for a socket that does not
//! exist, written into the pinned map with bpftool.
use std::{os::unix::fs::MetadataExt, process::Command, time::Duration};

use cwatch_testkit::{daemon::Daemon, wait_for};

use crate::common::serial;

/// `cwatch_common::SockRecord`'s layout (repr(C), 96 bytes): cookie @0,
/// start_ns @8, local_addr @16, peer_addr @32, inode @48, netns @56,
/// owner_tgid @60, owner_comm @64, local_port @80, peer_port @82,
/// family @84, flags @86, cgroup @88.
fn record(cookie: u64, netns: u32, local_port: u16, peer_port: u16) -> Vec<u8> {
    let mut r = vec![0u8; 96];
    r[0..8].copy_from_slice(&cookie.to_le_bytes());
    // An old start: due at once.
    r[8..16].copy_from_slice(&1u64.to_le_bytes());
    r[16..20].copy_from_slice(&[127, 0, 0, 1]);
    r[32..36].copy_from_slice(&[127, 0, 0, 1]);
    r[56..60].copy_from_slice(&netns.to_le_bytes());
    r[80..82].copy_from_slice(&local_port.to_le_bytes());
    r[82..84].copy_from_slice(&peer_port.to_le_bytes());
    r[84..86].copy_from_slice(&2u16.to_le_bytes()); // AF_INET
    r
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("0x{b:02x}")).collect()
}

/// One real socket through CLOSE_WAIT and out at once: the enter wakes
/// the young scanner, which then looks at every young record.
fn wake_scanner() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    std::thread::sleep(Duration::from_millis(20));
    drop(server);
}

#[test]
fn a_young_record_of_a_socket_already_gone_is_never_tracked() {
    let _serial = serial();
    // No full pass while we look: the safety net is far away.
    let daemon = Daemon::start(&["--reconcile-interval", "10m"]).unwrap();
    let pins = daemon.pin_dir.clone().expect("a private pin dir");
    let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
    // Far above any cookie the kernel handed out; no socket has these ends.
    let cookie = 0x7fff_0000_0000_0000 | u64::from(std::process::id());
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(pins.join("YOUNG"))
        .arg("key")
        .args(hex(&cookie.to_le_bytes()))
        .arg("value")
        .args(hex(&record(cookie, netns, 1, 2)))
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {out:?}");
    let vanished = || {
        daemon
            .metrics()
            .unwrap()
            .get("cwatch_young_vanished_total", &[])
            .unwrap_or(0.0)
    };
    let listed = || {
        daemon
            .sockets()
            .unwrap()
            .iter()
            .any(|s| s["cookie"].as_u64() == Some(cookie))
    };
    // The scanner reports it (and, with the check, finds it gone).
    wait_for(
        "the young scanner to take the record",
        Duration::from_secs(10),
        || {
            wake_scanner();
            if vanished() >= 1.0 || listed() {
                Ok(())
            } else {
                Err("not taken yet".into())
            }
        },
    )
    .unwrap();
    // Give a wrongly tracked ghost time to show, then look.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !listed(),
        "a socket the kernel does not have is listed:\n{}",
        daemon.log()
    );
    assert_eq!(vanished(), 1.0, "counted once");
}
