//! Basic auth under a brute force: a few hundred clients guessing passwords
//! in parallel (each guess a bcrypt check of a cost-10 hash, as `htpasswd
//! -B` makes them) while a Prometheus-like client scrapes `/metrics` over
//! its keep-alive connection with the right credentials. Every one of its
//! scrapes is answered, each within a bounded 1 s; every guess gets 401 (or
//! 429 while the checks are saturated), never 200; requests without
//! credentials still get 401 on every path.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use cwatch_testkit::{daemon::Daemon, wait_for};

use crate::common::serial;

/// Parallel guessers.
const ATTACKERS: usize = 300;
/// How long the brute force lasts.
const FLOOD: Duration = Duration::from_secs(8);

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One request on a fresh connection; the status line's code (0: none).
fn one_shot(addr: SocketAddr, path: &str, auth: Option<&str>) -> u16 {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_brute_force_never_slows_a_valid_scrape_past_a_second() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("cwatch-auth-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(&web, format!("basic_auth_users:\n  prometheus: {hash}\n")).unwrap();
    let daemon = Daemon::spawn(&["--web.config.file", web.to_str().unwrap()]).unwrap();
    let good = basic("prometheus", "s3cret");
    wait_for(
        "ready behind auth",
        Duration::from_secs(60),
        || match one_shot(daemon.addr, "/healthz", Some(&good)) {
            200 => Ok(()),
            code => Err(code.to_string()),
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.log()));
    for path in ["/metrics", "/healthz", "/api/v1/sockets", "/nowhere"] {
        assert_eq!(one_shot(daemon.addr, path, None), 401, "{path}");
    }

    // The scraper: one keep-alive connection, the right credentials, a
    // bounded 1 s per scrape.
    let scraper: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(1)))
        .max_idle_connections_per_host(1)
        .build()
        .into();
    let url = format!("http://{}/metrics", daemon.addr);
    let scrape = || -> Result<Duration, String> {
        let started = Instant::now();
        let mut r = scraper
            .get(&url)
            .header("Authorization", &good)
            .call()
            .map_err(|e| format!("after {:?}: {e}", started.elapsed()))?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| format!("after {:?}: {e}", started.elapsed()))?;
        if status != 200 || !body.contains("cwatch_build_info") {
            return Err(format!("{status}: {}", body.lines().next().unwrap_or("")));
        }
        Ok(started.elapsed())
    };
    let quiet: Vec<Duration> = (0..5).map(|_| scrape().unwrap()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (guesses, unauthorized, busy, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let (stop, guesses, unauthorized, busy, other) = (
                Arc::clone(&stop),
                Arc::clone(&guesses),
                Arc::clone(&unauthorized),
                Arc::clone(&busy),
                Arc::clone(&other),
            );
            let addr = daemon.addr;
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let auth = basic("prometheus", &format!("guess-{i}-{n}"));
                    n += 1;
                    let code = one_shot(addr, "/metrics", Some(&auth));
                    guesses.fetch_add(1, Ordering::Relaxed);
                    match code {
                        401 => unauthorized.fetch_add(1, Ordering::Relaxed),
                        429 => busy.fetch_add(1, Ordering::Relaxed),
                        200 => panic!("a wrong password was let in"),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let flood_start = Instant::now();
    let mut during = Vec::new();
    let mut failures = Vec::new();
    while flood_start.elapsed() < FLOOD {
        match scrape() {
            Ok(d) => during.push(d),
            Err(e) => failures.push(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().expect("an attacker thread panicked");
    }
    during.sort();
    let pct = |v: &[Duration], p: usize| v.get(v.len().saturating_sub(1) * p / 100).copied();
    println!(
        "auth flood: {ATTACKERS} parallel guessers, {} guesses in {FLOOD:?} ({} 401, {} 429, {} other); \
         valid scrapes: quiet max {:?}; during the flood {} ok, {} failed, p50 {:?}, max {:?}",
        guesses.load(Ordering::Relaxed),
        unauthorized.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        quiet.iter().max(),
        during.len(),
        failures.len(),
        pct(&during, 50),
        during.last(),
    );
    assert!(
        failures.is_empty(),
        "{} of {} valid scrapes failed or took over 1 s during the brute force: {failures:?}\nlog:\n{}",
        failures.len(),
        failures.len() + during.len(),
        daemon.log()
    );
    assert!(
        unauthorized.load(Ordering::Relaxed) > 0,
        "no guess was ever answered 401"
    );
    // Still right after the flood, and still closed without credentials.
    scrape().unwrap();
    assert_eq!(one_shot(daemon.addr, "/metrics", None), 401);
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}
