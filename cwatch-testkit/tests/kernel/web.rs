//! The web endpoint on the real daemon: TLS and basic auth from an
//! exporter-toolkit web config (certificates made at test time), gzip when
//! asked, and clients that stall, flood or send garbage never stop it from
//! answering.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use cwatch_testkit::{daemon::Daemon, prom::Scrape, wait_for};

use crate::common::serial;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// One HTTP/1.1 request over `stream`; returns (status, head, body).
fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    path: &str,
    headers: &str,
) -> (u16, String, Vec<u8>) {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(reply.len());
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let body = reply.get(split + 4..).unwrap_or_default().to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

fn tls_get(
    addr: SocketAddr,
    ca: &rustls_pki_types::CertificateDer<'static>,
    path: &str,
    auth: Option<&str>,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into()?)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let stream = rustls::StreamOwned::new(conn, tcp);
    let headers = auth
        .map(|a| format!("Authorization: Basic {}\r\n", b64(a)))
        .unwrap_or_default();
    Ok(exchange(stream, path, &headers))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn tls_and_basic_auth_from_an_exporter_toolkit_web_config() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("cwatch-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    write(&dir, "tls.crt", &cert.cert.pem());
    write(&dir, "tls.key", &cert.key_pair.serialize_pem());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    // Relative paths: from the web config's own directory.
    let web = write(
        &dir,
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    );
    let daemon = Daemon::spawn(&["--web.config.file", &web]).unwrap();
    let ca = cert.cert.der().clone();
    wait_for(
        "healthz over TLS with auth",
        Duration::from_secs(60),
        || match tls_get(daemon.addr, &ca, "/healthz", Some("prometheus:s3cret")) {
            Ok((200, _, _)) => Ok(()),
            Ok((code, head, _)) => Err(format!("{code} {head}")),
            Err(e) => Err(e.to_string()),
        },
    )
    .unwrap();
    let (status, _, body) =
        tls_get(daemon.addr, &ca, "/metrics", Some("prometheus:s3cret")).unwrap();
    assert_eq!(status, 200);
    let scrape = Scrape::parse(&String::from_utf8(body).unwrap()).unwrap();
    assert_eq!(
        scrape.get(
            "cwatch_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    let (status, head, _) = tls_get(daemon.addr, &ca, "/metrics", None).unwrap();
    assert_eq!(status, 401, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    assert_eq!(
        tls_get(daemon.addr, &ca, "/metrics", Some("prometheus:wrong"))
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        tls_get(daemon.addr, &ca, "/metrics", Some("nobody:s3cret"))
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        tls_get(daemon.addr, &ca, "/api/v1/sockets", None)
            .unwrap()
            .0,
        401
    );

    // Plain HTTP to the TLS port gets no answer, and does no harm.
    let plain = TcpStream::connect(daemon.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, _, _) = exchange(plain, "/metrics", "");
    assert_ne!(status, 200);
    assert_eq!(
        tls_get(daemon.addr, &ca, "/healthz", Some("prometheus:s3cret"))
            .unwrap()
            .0,
        200
    );

    // A broken web config is bad input: exit 2 with one line, nothing started.
    let bad = write(
        &dir,
        "bad.yml",
        "basic_auth_users:\n  prometheus: plaintext\n",
    );
    let stderr = crate::common::exits_2_with_one_line(
        std::process::Command::new(cwatch_testkit::daemon::cwatch_bin().unwrap()).args([
            "run",
            "--listen",
            "127.0.0.1:1",
            "--web.config.file",
            &bad,
        ]),
    );
    assert!(
        stderr.contains("bad.yml") && stderr.contains("not a bcrypt hash"),
        "{stderr}"
    );
    drop(daemon);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gzip_when_asked() {
    let _serial = serial();
    let daemon = Daemon::start(&[]).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://{}/metrics", daemon.addr))
        .header("Accept-Encoding", "gzip")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let raw = r.body_mut().read_to_vec().unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_string(&mut text)
        .unwrap();
    let scrape = Scrape::parse(&text).unwrap();
    assert!(
        scrape
            .scalar("cwatch_close_wait_transitions_total")
            .is_some()
    );
    assert!(
        raw.len() < text.len(),
        "compressed: {} < {}",
        raw.len(),
        text.len()
    );
    let (status, body) = daemon.get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE cwatch_build_info gauge"),
        "plain without Accept-Encoding"
    );
}

#[test]
fn stalled_and_garbage_clients_never_stop_it_answering() {
    let _serial = serial();
    let daemon =
        Daemon::start(&["--web.request-timeout", "1s", "--web.max-connections", "4"]).unwrap();
    // More stalled clients than connection slots: half a request each.
    let mut stalled: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(daemon.addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Garbage of every kind meanwhile.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    for garbage in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        huge.as_bytes(),
        b"GET /api/v1/sockets?limit=%ZZ HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(daemon.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let _ = conn.write_all(garbage);
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
    }
    // A fresh scraper still gets its answer: the stalled ones are cut off
    // after the request timeout and free their slots.
    wait_for(
        "a fresh connection to be served",
        Duration::from_secs(60),
        || {
            let conn = TcpStream::connect(daemon.addr).map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .map_err(|e| e.to_string())?;
            match exchange(conn, "/healthz", "") {
                (200, _, _) => Ok(()),
                (code, head, _) => Err(format!("{code} {head}")),
            }
        },
    )
    .unwrap();
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        // The daemon closed it (EOF) or answered 408: either way it let go.
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 400"),
            "{text}"
        );
    }
    assert_eq!(daemon.get("/nowhere").unwrap().0, 404);
    assert_eq!(daemon.get("/api/v1/sockets?limit=-1").unwrap().0, 400);
    assert_eq!(daemon.get("/healthz").unwrap().0, 200);
}
