//! The HTTP port under abuse, on the real daemon with its default limits:
//! thousands of idle connections kept open (reopened as they are closed),
//! hundreds of slowloris ones trickling a header each second, oversized
//! heads, garbage and pipelined junk, all at once for a while. Throughout, a
//! well-behaved scrape of /metrics — on a fresh connection, and on a kept
//! one as Prometheus does — must answer within 1 s, and the daemon's memory
//! must stay bounded. The figures are printed (`--nocapture`).
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use cwatch_testkit::{daemon::Daemon, prom::Scrape};

use crate::common::serial;

const IDLE: usize = 3000;
const SLOWLORIS: usize = 500;
const ABUSE_FOR: Duration = Duration::from_secs(30);
/// A scrape must be answered within this (a bounded timeout, not a timing).
const SCRAPE_LIMIT: Duration = Duration::from_secs(1);
/// The daemon may grow by at most this much under the abuse: it holds at
/// most 2048 connections, each costing at most ~18 KiB once it has sent
/// something (hyper's buffers), idle ones nothing (they wait in the kernel).
const RSS_GROWTH_LIMIT_KIB: u64 = 48 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A connection that is still open (not closed by the daemon).
fn alive(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 256];
    match s.read(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::WouldBlock,
    }
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Keeps `n` connections open (reopening the ones the daemon closed),
/// sending `first` on each new one and `every_second` on each once a second.
fn hold(
    addr: SocketAddr,
    n: usize,
    first: &'static [u8],
    every_second: &'static [u8],
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
) {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for slot in &mut conns {
            let keep = slot
                .as_mut()
                .is_some_and(|s| alive(s) && s.write_all(every_second).is_ok());
            if !keep {
                if slot.is_some() {
                    reopened.fetch_add(1, Ordering::Relaxed);
                }
                *slot = connect(addr).and_then(|mut s| s.write_all(first).ok().map(|()| s));
            }
        }
        thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
}

/// Sends `payload` on fresh connections in a loop and reads what comes
/// back until the daemon closes.
fn hammer(addr: SocketAddr, payload: Vec<u8>, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
            let _ = s.write_all(&payload);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            sent.fetch_add(1, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One scrape on `stream`, within the limit: the time it took.
fn scrape(stream: &mut TcpStream, close: bool) -> Result<Duration, String> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(SCRAPE_LIMIT))
        .map_err(|e| e.to_string())?;
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("after {:?}: {e}", started.elapsed()))?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        // Content-Length tells when a kept connection's answer is whole.
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && let Some(len) = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>())
            })
            && body.len() >= len.map_err(|e| e.to_string())?
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {}", text.lines().next().unwrap_or("")));
    }
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Scrape::parse(body).map_err(|e| e.to_string())?;
    let took = started.elapsed();
    if took > SCRAPE_LIMIT {
        return Err(format!("took {took:?}"));
    }
    Ok(took)
}

#[test]
fn scrapes_answer_and_memory_stays_bounded_under_abuse() {
    let _serial = serial();
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let daemon = Daemon::start(&[]).unwrap();
    let addr = daemon.addr;
    let mut kept = TcpStream::connect(addr).unwrap();
    for _ in 0..5 {
        scrape(&mut kept, false).unwrap();
    }
    let baseline = rss_kib(daemon.pid);

    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicU64::new(0));
    let hammered = Arc::new(AtomicU64::new(0));
    let mut abusers = Vec::new();
    for (n, first, every) in [
        (IDLE, &b""[..], &b""[..]),
        (
            SLOWLORIS,
            &b"GET /metrics HTTP/1.1\r\nHost: x\r\n"[..],
            &b"X-Slow: 1\r\n"[..],
        ),
    ] {
        let (stop, reopened) = (Arc::clone(&stop), Arc::clone(&reopened));
        abusers.push(thread::spawn(move || {
            hold(addr, n, first, every, stop, reopened)
        }));
    }
    let oversized = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let pipelined = [
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(20)
            .into_bytes(),
        b"\x00\xff junk \r\n\r\n GET / HTTP/9.9\r\n\r\n".to_vec(),
    ]
    .concat();
    for payload in [
        oversized.into_bytes(),
        pipelined,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not really TLS".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ] {
        let (stop, hammered) = (Arc::clone(&stop), Arc::clone(&hammered));
        abusers.push(thread::spawn(move || hammer(addr, payload, stop, hammered)));
    }

    let started = Instant::now();
    let mut took = Vec::new();
    let mut peak = baseline;
    let mut peak_fds = 0;
    let mut failures = Vec::new();
    while started.elapsed() < ABUSE_FOR {
        let fresh = TcpStream::connect_timeout(&addr, SCRAPE_LIMIT)
            .map_err(|e| e.to_string())
            .and_then(|mut s| scrape(&mut s, true));
        let kept_one = scrape(&mut kept, false);
        for (what, r) in [("fresh", fresh), ("kept", kept_one)] {
            match r {
                Ok(d) => took.push(d),
                Err(e) => failures.push(format!("{what} scrape at {:?}: {e}", started.elapsed())),
            }
        }
        if failures.iter().any(|f| f.starts_with("kept")) {
            // A kept connection the daemon closed is reopened, as Prometheus does.
            kept = TcpStream::connect(addr).unwrap();
        }
        peak = peak.max(rss_kib(daemon.pid));
        let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid))
            .map(|d| d.count())
            .unwrap_or(0);
        peak_fds = peak_fds.max(fds);
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for a in abusers {
        a.join().unwrap();
    }
    took.sort();
    let p50 = took.get(took.len() / 2).copied().unwrap_or_default();
    let max = took.last().copied().unwrap_or_default();
    println!(
        "abuse: {} scrapes, p50 {p50:?}, max {max:?}; RSS {baseline} KiB -> peak {peak} KiB; \
         peak fds {peak_fds}; {} idle/slow connections reopened after the daemon closed them; \
         {} oversized/garbage/pipelined connections",
        took.len(),
        reopened.load(Ordering::Relaxed),
        hammered.load(Ordering::Relaxed),
    );
    assert!(
        failures.is_empty(),
        "{} of {} scrapes failed: {failures:#?}",
        failures.len(),
        took.len() + failures.len()
    );
    assert!(
        peak - baseline < RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {baseline} KiB to {peak} KiB under abuse"
    );
    assert!(
        reopened.load(Ordering::Relaxed) > 0,
        "the daemon closed idle and slow connections to make room"
    );
    assert!(hammered.load(Ordering::Relaxed) > 0);
    // And it still answers normally afterwards.
    assert_eq!(daemon.get("/healthz").unwrap().0, 200);
    drop(daemon);
}
