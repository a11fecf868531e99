//! Shared by the kernel tests: serialisation, preflight, and ground-truth
//! queries scoped to one test's port.
use std::{
    collections::BTreeMap,
    net::{IpAddr, TcpListener},
    process::Command,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use cwatch_testkit::{
    load::Load,
    ss::{self, SsSocket},
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Call first in every test: checks the machine can run kernel tests (and
/// fails loudly when it cannot: these tests are never skipped) and makes
/// tests run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    assert!(
        rustix::process::geteuid().is_root(),
        "the kernel tests need root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); run them with `sudo -E cargo xtask test`"
    );
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "this kernel has no BTF (/sys/kernel/btf/vmlinux); cwatch needs CONFIG_DEBUG_INFO_BTF"
    );
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port free on every one of `ips` (each a loopback address).
pub fn free_port_on(ips: &[&str]) -> u16 {
    'search: for _ in 0..100 {
        let port = TcpListener::bind((ips[0], 0))
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port();
        for ip in &ips[1..] {
            if TcpListener::bind((*ip, port)).is_err() {
                continue 'search;
            }
        }
        return port;
    }
    panic!("no port free on all of {ips:?}")
}

/// A leak of `n` sockets of `comm` to a port of its own on `ip` (a
/// loopback address), all in CLOSE_WAIT per `ss` before it returns:
/// (server, client, port).
pub fn leak_on(ip: &str, comm: &str, n: usize) -> (Load, Load, u16) {
    let port = free_port_on(&[ip]);
    let inst = format!("{ip}:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let client = Load::client(comm, &[(inst.clone(), n)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {inst} {n}"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    cwatch_testkit::wait_for("leak in CLOSE_WAIT", Duration::from_secs(10), || {
        if ss_to_port(port).len() == n {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .unwrap();
    (server, client, port)
}

/// `cwatch COMMAND --listen <daemon> ARGS…` (a client command: `ls`,
/// `reap`), which must succeed; its stdout.
pub fn client(daemon: &cwatch_testkit::daemon::Daemon, command: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(cwatch_testkit::daemon::cwatch_bin().unwrap())
        .arg(command)
        .arg("--listen")
        .arg(daemon.addr.to_string())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cwatch {command} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// CLOSE_WAIT sockets (per `ss`) whose peer port is `port`.
pub fn ss_to_port(port: u16) -> Vec<SsSocket> {
    ss::close_wait()
        .expect("ss works")
        .into_iter()
        .filter(|s| s.peer.port() == port)
        .collect()
}

/// How many of `socks` each pid holds (a socket counts for its lowest pid).
pub fn count_by_pid(socks: &[SsSocket]) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for s in socks {
        if let Some(pid) = s.users.iter().map(|u| u.pid).min() {
            *out.entry(pid).or_default() += 1;
        }
    }
    out
}

/// How many of `socks` go to each peer address (as cwatch shows it).
pub fn count_by_peer(socks: &[SsSocket]) -> BTreeMap<IpAddr, u64> {
    let mut out = BTreeMap::new();
    for s in socks {
        *out.entry(ss::shown(s.peer.ip())).or_default() += 1;
    }
    out
}

/// API entries (JSON) whose peer port is `port`.
pub fn api_to_port(sockets: &[serde_json::Value], port: u16) -> Vec<serde_json::Value> {
    sockets
        .iter()
        .filter(|s| s["peer_port"] == port)
        .cloned()
        .collect()
}

pub const SECOND: u64 = 1_000_000_000;

/// Runs `cmd` (cwatch refusing its input) and checks the contract for bad
/// input: exit code 2 and exactly one line on stderr, which it returns.
pub fn exits_2_with_one_line(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{cmd:?}: {stderr}");
    stderr
}

/// A network namespace of this test's own, deleted when dropped.
pub struct NetNs(pub String);

impl NetNs {
    pub fn new() -> Self {
        let name = format!("cwatch-test-{}", std::process::id());
        let run = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        run(&["netns", "add", &name]);
        let ns = NetNs(name);
        run(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.0]
    }

    /// The namespace's inode number (the API's `netns`).
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .unwrap()
            .ino()
    }

    /// A server on 127.0.0.1:`port` in the namespace and a client `comm`
    /// with `count` connections to it, left in CLOSE_WAIT by the server's
    /// close: (server, client).
    pub fn leak(&self, port: u16, comm: &str, count: usize) -> (Load, Load) {
        let inst = format!("127.0.0.1:{port}");
        let mut server = Load::spawn_wrapped(
            &self.exec(),
            &["server".into(), "--listen".into(), inst.clone()],
        )
        .unwrap();
        server.expect("ready", Duration::from_secs(30)).unwrap();
        let count = count.to_string();
        let args: Vec<String> = [
            "client",
            "--comm",
            comm,
            "--on-eof",
            "leak",
            "--connect",
            &inst,
            "--count",
            &count,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut client = Load::spawn_wrapped(&self.exec(), &args).unwrap();
        client.expect("connected", Duration::from_secs(30)).unwrap();
        server.ask(&format!("close {inst}"), "closed").unwrap();
        (server, client)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
