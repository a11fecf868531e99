//! A burst of leaked sockets from one process is attributed without a walk
//! of /proc per socket, and without tracking every connect() of the host.
//!
//! The kernel records each socket's cgroup. Where that is a cgroup of its
//! own (a systemd unit, a container; here one the test creates), the holder
//! is looked for among that cgroup's processes: no walk at all. In the root
//! cgroup, where nothing points at a process cwatch never saw leak, its
//! first burst costs one walk, and its next burst none: it is a known
//! holder by then.
use std::{path::PathBuf, time::Duration};

use cwatch_testkit::{daemon::Daemon, load::Load, ss, wait_for};
use serde_json::Value;

use crate::common::{free_port_on, serial};

const N: usize = 360;

/// A cgroup of this test's own under the cgroup2 mount, removed when
/// dropped (after the processes in it are gone).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.split_whitespace().next()? == "cgroup2")
                    .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .expect("a cgroup2 mount");
        let dir = root.join(format!("cwatch-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup(dir)
    }

    /// A wrapper for [`Load::client_wrapped`] that moves the process into
    /// this cgroup before it execs cwatch-load (so its sockets are made
    /// there).
    fn wrapper(&self) -> Vec<&str> {
        vec![
            "sh",
            "-c",
            "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"",
            self.0.to_str().unwrap(),
        ]
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

/// What attributing one burst cost the daemon.
#[derive(Debug)]
struct Cost {
    walks: f64,
    processes: f64,
    readlinks: u64,
    getdents: u64,
    processes_on_host: usize,
}

fn scans(d: &Daemon) -> (f64, f64) {
    let m = d.metrics().unwrap();
    let get = |kind| {
        m.get("cwatch_procfs_scans_total", &[("kind", kind)])
            .unwrap_or(0.0)
    };
    (get("walk"), get("process"))
}

/// Closes `inst` on `server` (its clients' sockets to it enter CLOSE_WAIT)
/// and waits until the API lists every one of `client`'s with the holders
/// `ss` shows, counting the daemon's /proc reads meanwhile.
fn burst(daemon: &Daemon, server: &mut Load, inst: &str, client: &Load) -> Cost {
    let port: u16 = inst.rsplit_once(':').unwrap().1.parse().unwrap();
    let peer_ip = inst.rsplit_once(':').unwrap().0.to_string();
    let (walks0, procs0) = scans(daemon);
    let processes_on_host = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count();
    let strace = std::process::Command::new("strace")
        .args(["-f", "-c", "-U", "name,calls", "-e"])
        .arg("trace=getdents64,readlinkat,readlink")
        .args(["-p", &daemon.pid.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace (installed by cargo xtask setup)");
    std::thread::sleep(Duration::from_millis(500));
    server.ask(&format!("close {inst}"), "closed").unwrap();
    let pick = |s: &Value| {
        s["state"] == "CLOSE_WAIT" && s["peer_port"] == port && s["peer_addr"] == peer_ip.as_str()
    };
    wait_for("API holders = ss holders", Duration::from_secs(20), || {
        let socks: Vec<Value> = daemon
            .sockets()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(pick)
            .collect();
        let truth = ss::close_wait()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| s.peer.port() == port && s.peer.ip().to_string() == peer_ip)
            .count();
        let held = socks
            .iter()
            .filter(|s| s["pid"] == client.pid && s["fd"].is_u64())
            .count();
        if truth == N && socks.len() == N && held == N {
            Ok(())
        } else {
            Err(format!(
                "ss {truth}, api {}, held by the client {held}",
                socks.len()
            ))
        }
    })
    .unwrap();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(strace.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    );
    let out = strace.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    let calls = |name: &str| -> u64 {
        report
            .lines()
            .filter(|l| l.split_whitespace().any(|f| f == name))
            .filter_map(|l| l.split_whitespace().find_map(|f| f.parse::<u64>().ok()))
            .sum()
    };
    let (walks1, procs1) = scans(daemon);
    Cost {
        walks: walks1 - walks0,
        processes: procs1 - procs0,
        readlinks: calls("readlinkat") + calls("readlink"),
        getdents: calls("getdents64"),
        processes_on_host,
    }
}

/// No walk: a scan of the holder's fd table (about N readlinks), a handful
/// of processes, not every process's table.
fn assert_no_walk(cost: &Cost, what: &str) {
    assert_eq!(cost.walks, 0.0, "{what}: {cost:?}");
    assert!(cost.processes <= (N / 16) as f64, "{what}: {cost:?}");
    assert!(cost.readlinks < (4 * N) as u64, "{what}: {cost:?}");
    assert!(
        cost.getdents < cost.processes_on_host as u64,
        "{what}: {cost:?}"
    );
}

#[test]
fn a_burst_in_its_own_cgroup_is_attributed_without_walking_proc() {
    let _serial = serial();
    let cgroup = TestCgroup::new("burst");
    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let port = free_port_on(&["127.0.4.5"]);
    let inst = format!("127.0.4.5:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let client =
        Load::client_wrapped(&cgroup.wrapper(), "cw-burst", &[(inst.clone(), N)], "leak").unwrap();
    let procs = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.trim(),
        client.pid.to_string(),
        "the client is in the test's cgroup"
    );
    server
        .ask(&format!("wait-accepted {inst} {N}"), "accepted")
        .unwrap();
    let cost = burst(&daemon, &mut server, &inst, &client);
    assert_no_walk(&cost, "a burst in its own cgroup");
    drop(client);
}

#[test]
fn a_burst_in_the_root_cgroup_costs_one_walk_then_none() {
    let _serial = serial();
    let daemon = Daemon::start(&["--leak-after", "1h"]).unwrap();
    let port = free_port_on(&["127.0.4.6", "127.0.4.7"]);
    let (a, b) = (format!("127.0.4.6:{port}"), format!("127.0.4.7:{port}"));
    let mut server = Load::server(&[a.clone(), b.clone()]).unwrap();
    let client = Load::client("cw-burst-root", &[(a.clone(), N), (b.clone(), N)], "leak").unwrap();
    server
        .ask(&format!("wait-accepted {a} {N}"), "accepted")
        .unwrap();
    server
        .ask(&format!("wait-accepted {b} {N}"), "accepted")
        .unwrap();
    let first = burst(&daemon, &mut server, &a, &client);
    // Nothing names the client yet: one walk for the whole burst, never
    // one per socket.
    assert!(first.walks <= 1.0, "first burst: {first:?}");
    let second = burst(&daemon, &mut server, &b, &client);
    assert_no_walk(&second, "the known holder's next burst");
}
