//! Leak provenance on the real kernel: programs written for the test
//! (`cwatch-stacks/testdata/backend.*`, built here as cwatch-stacks' own
//! capture tests build them) connect to our listener on 127.0.0.1 from a
//! known function and never close. Named with `--watch comm:NAME`, their
//! connect() is captured in the kernel; once the socket is leaked, the API's
//! `site`, `cwatch ls --stacks` and `cwatch_leak_site_sockets` must name
//! that function (and its caller), as binutils' ground truth places them.
//! A stripped binary must show module and offset, never a name; a process
//! that is not watched gets no stack at all.
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use cwatch_stacks::testing::{self, Recipe};
use cwatch_testkit::{daemon::Daemon, wait_for};
use serde_json::Value;

use crate::common::serial;

/// A leaking test program; killed (by pid) when dropped.
struct Leaker {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Leaker {
    /// Starts `exe port`; it connects when told to ([`Leaker::connect`]).
    fn spawn(exe: &Path, port: u16) -> Leaker {
        let mut child = Command::new(exe)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test program");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Leaker { child, out }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it connect, and waits until it has.
    fn connect(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("tell it to connect");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read its answer");
        assert_eq!(line.trim(), "connected", "the program did not connect");
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of its own for a test's binaries; removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(name: &str) -> WorkDir {
        let dir = std::env::temp_dir().join(format!("cwatch-prov-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        WorkDir(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn comm_of(exe: &Path) -> String {
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    name.chars().take(15).collect()
}

/// The daemon's socket to `port` once it is leaked and looked at (its
/// `site` set, or `wait_site` false: only leaked and given time).
fn leaked_socket(daemon: &Daemon, port: u16, pid: u32, wait_site: bool) -> Value {
    wait_for(
        "the leaked socket's provenance",
        Duration::from_secs(40),
        || {
            let all = daemon.sockets().map_err(|e| e.to_string())?;
            let ours: Vec<&Value> = all
                .iter()
                .filter(|s| s["peer_port"] == port && s["pid"] == pid)
                .collect();
            match ours.as_slice() {
                [s] if s["leaked"] == true && (!wait_site || !s["site"].is_null()) => {
                    Ok((*s).clone())
                }
                _ => Err(format!("{ours:?}")),
            }
        },
    )
    .unwrap()
}

fn ls_stacks(daemon: &Daemon) -> String {
    String::from_utf8(crate::common::client(
        daemon,
        "ls",
        &["--stacks", "--leaked"],
    ))
    .unwrap()
}

/// `cwatch_leak_site_sockets{site}` for `site`, once the family sums to the
/// leaked total (`cwatch_process_leaked_sockets` summed) in one scrape.
fn site_gauge(daemon: &Daemon, site: &str) -> f64 {
    wait_for(
        "site series summing to the leaked total",
        Duration::from_secs(10),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            let sum = |name| m.find(name, &[]).map(|s| s.value).sum::<f64>();
            let (sites, leaked) = (
                sum("cwatch_leak_site_sockets"),
                sum("cwatch_process_leaked_sockets"),
            );
            if sites != leaked {
                return Err(format!("sites {sites} != leaked {leaked}:\n{}", m.text));
            }
            m.get("cwatch_leak_site_sockets", &[("site", site)])
                .ok_or_else(|| format!("no series for {site:?}:\n{}", m.text))
        },
    )
    .unwrap()
}

/// Builds `recipe`, runs it watched by name, leaks one socket, and returns
/// the daemon's object for it with the daemon still up.
fn leak_watched(recipe: &Recipe) -> (Daemon, Leaker, Value, PathBuf, WorkDir) {
    let dir = WorkDir::new(recipe.name);
    let (exe, _) = testing::build(recipe, &dir.0).expect("build the test program");
    let comm = comm_of(&exe);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let watch = format!("comm:{comm}");
    let daemon = Daemon::start(&["--watch", &watch, "--leak-after", "2s"]).unwrap();
    let mut leaker = Leaker::spawn(&exe, port);
    // Its first connect is captured only once the daemon put it on the
    // watch list (the list is brought in step every few seconds).
    wait_for(
        "the program on the watch list",
        Duration::from_secs(30),
        || {
            let log = daemon.log();
            log.contains("watch list updated")
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .unwrap();
    leaker.connect();
    let (accepted, _) = listener.accept().unwrap();
    drop(accepted); // our FIN: the program's socket goes to CLOSE_WAIT
    let sock = leaked_socket(&daemon, port, leaker.pid(), true);
    (daemon, leaker, sock, exe, dir)
}

/// The frames of `sock`'s stack in `exe`.
fn own_frames<'a>(sock: &'a Value, exe: &Path) -> Vec<&'a Value> {
    let exe = exe.display().to_string();
    sock["stack"]["frames"]
        .as_array()
        .expect("stack frames")
        .iter()
        .filter(|f| f["module"] == exe.as_str())
        .collect()
}

fn assert_named(recipe: &Recipe) {
    let _serial = serial();
    let (daemon, leaker, sock, exe, dir) = leak_watched(recipe);
    let want = testing::expected_site(recipe).unwrap();
    assert_eq!(sock["site"], want.as_str(), "{sock:#}");
    assert_eq!(sock["stack"]["partial"], false, "{sock:#}");
    let own = own_frames(&sock, &exe);
    let names: Vec<&str> = own.iter().filter_map(|f| f["symbol"].as_str()).collect();
    assert!(
        names.iter().any(|n| n.ends_with(recipe.opener)),
        "{names:?}"
    );
    for f in &own {
        assert!(f["offset"].is_u64(), "{f}");
    }
    let table = ls_stacks(&daemon);
    let row = table
        .lines()
        .find(|l| l.contains(&format!("{}/", leaker.pid())) && l.contains("yes"))
        .unwrap_or_else(|| panic!("no row of ours:\n{table}"));
    assert!(row.ends_with(&want), "{row}");
    let summary = table.split("CLOSE_WAIT by site:").nth(1).expect(&table);
    assert!(summary.lines().any(|l| l.contains(&want)), "{table}");
    assert_eq!(site_gauge(&daemon, &want), 1.0);
    drop(leaker);
    daemon.stop().unwrap();
    drop(dir);
}

#[test]
fn c_without_frame_pointers_names_the_opener() {
    assert_named(&testing::BACKEND_C);
}

#[test]
fn rust_names_the_opener() {
    assert_named(&testing::BACKEND_RUST);
}

#[test]
fn stripped_shows_module_and_offset_never_a_name() {
    let _serial = serial();
    let recipe = testing::BACKEND_C_STRIPPED;
    let (daemon, leaker, sock, exe, dir) = leak_watched(&recipe);
    let site = sock["site"].as_str().unwrap().to_string();
    assert!(site.starts_with("prov-cs.stripped+0x"), "{site}");
    let own = own_frames(&sock, &exe);
    assert!(own.len() >= 2, "{sock:#}");
    for f in &own {
        assert!(f["symbol"].is_null(), "a name from a stripped binary: {f}");
        assert!(f["offset"].is_u64() && f["build_id"].is_string(), "{f}");
    }
    // No frame anywhere names the program's functions.
    for f in sock["stack"]["frames"].as_array().unwrap() {
        let s = f["symbol"].as_str().unwrap_or("");
        assert!(
            !s.contains("open_backend_connection") && !s.contains("handle_request"),
            "{f}"
        );
    }
    assert!(ls_stacks(&daemon).contains(&site));
    assert_eq!(site_gauge(&daemon, &site), 1.0);
    drop(leaker);
    daemon.stop().unwrap();
    drop(dir);
}

#[test]
fn a_process_not_watched_gets_no_stack() {
    let _serial = serial();
    let dir = WorkDir::new("unwatched");
    let (exe, _) = testing::build(&testing::BACKEND_C, &dir.0).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Watched: some other name only.
    let daemon = Daemon::start(&["--watch", "comm:cwatch-nobody", "--leak-after", "1s"]).unwrap();
    let mut leaker = Leaker::spawn(&exe, port);
    leaker.connect();
    drop(listener.accept().unwrap());
    let sock = leaked_socket(&daemon, port, leaker.pid(), false);
    // Given time for a pass of the provenance thread over it.
    std::thread::sleep(Duration::from_secs(3));
    let sock2 = leaked_socket(&daemon, port, leaker.pid(), false);
    assert!(
        sock["site"].is_null() && sock2["site"].is_null(),
        "{sock2:#}"
    );
    assert!(sock2["stack"].is_null(), "{sock2:#}");
    assert!(site_gauge(&daemon, "[unknown]") >= 1.0);
    drop(leaker);
    daemon.stop().unwrap();
    drop(dir);
}
