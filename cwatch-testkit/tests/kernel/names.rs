//! Names are data: a real process that names itself with a newline, an
//! escape sequence and a byte that is not UTF-8 (prctl(PR_SET_NAME)), runs
//! from an executable path and sits in a cgroup (a unit) named the same
//! way. /metrics and the API keep the exact bytes (invalid UTF-8 as
//! `\xNN`); `cwatch ls`, `cwatch doctor` and the log show every control
//! character escaped, one row per socket, one line per log event.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin},
    load::{Load, load_bin},
    wait_for,
};

use crate::common::{serial, ss_to_port};

const FAMILY: &str = "cwatch_process_close_wait_sockets";
/// What the process calls itself: newline, ESC [7m (reverse video), 0xff.
const COMM_ARG: &str = "ev\nil\u{1b}[7m\\xff";
/// Those bytes as /metrics and JSON carry them (after their own escaping).
const COMM_EXACT: &str = "ev\nil\u{1b}[7m\\xff";
/// And as people see them.
const COMM_SHOWN: &str = "ev\\nil\\x1b[7m\\xff";

/// A directory removed on drop; a cgroup is moved out of first.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                let root = dir.parent().unwrap().join("cgroup.procs");
                for pid in procs.lines() {
                    let _ = std::fs::write(&root, pid);
                }
                let _ = std::fs::remove_dir(dir);
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
        })
        .expect("this test needs the unified cgroup hierarchy")
}

fn hostile(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut name = prefix.as_bytes().to_vec();
    name.extend_from_slice(b"\n\x1b[7m\xff");
    name.extend_from_slice(suffix.as_bytes());
    dir.join(OsStr::from_bytes(&name))
}

#[test]
fn hostile_names_keep_their_bytes_in_formats_and_are_escaped_for_people() {
    let _serial = serial();
    let me = std::process::id();
    let tmp = std::env::temp_dir().join(format!("cwatch-names-{me}"));
    let bin_dir = hostile(&tmp, "bin", "");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let exe = bin_dir.join("cwatch-load");
    std::fs::copy(load_bin().unwrap(), &exe).unwrap();
    let unit_name = [
        format!("cwatch-test-{me}-").as_bytes(),
        b"\x1b[7m\xff.service",
    ]
    .concat();
    let unit_dir = cgroup2_root().join(OsStr::from_bytes(&unit_name));
    std::fs::create_dir(&unit_dir).unwrap();
    let _cleanup = Cleanup(vec![unit_dir.clone(), tmp]);

    let port = crate::common::free_port_on(&["127.0.6.1"]);
    let inst = format!("127.0.6.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let args: Vec<String> = [
        "client",
        "--comm",
        COMM_ARG,
        "--on-eof",
        "leak",
        "--connect",
        &inst,
        "--count",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut client = Load::spawn_from(&exe, &args).unwrap();
    client.expect("connected", Duration::from_secs(60)).unwrap();
    std::fs::write(unit_dir.join("cgroup.procs"), client.pid.to_string()).unwrap();
    server
        .ask(&format!("wait-accepted {inst} 3"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    assert_eq!(ss_to_port(port).len(), 3);
    let comm_bytes = std::fs::read(format!("/proc/{}/comm", client.pid)).unwrap();
    assert_eq!(
        comm_bytes, b"ev\nil\x1b[7m\xff\n",
        "the kernel keeps the bytes"
    );

    let include = format!("peer_port:{port}");
    let daemon = Daemon::start(&[
        "--include",
        &include,
        "--label",
        "unit,exe",
        "--leak-after",
        "1s",
    ])
    .unwrap();
    let pid = client.pid.to_string();
    // The kernel writes /proc/<pid>/cgroup unescaped, one line per
    // hierarchy, so a cgroup path cannot carry a newline (nor can a systemd
    // unit name); the escape character and the stray byte it can.
    let unit = format!("cwatch-test-{me}-\u{1b}[7m\\xff.service");
    let exe_exact = format!(
        "{}/bin\n\u{1b}[7m\\xff/cwatch-load",
        std::env::temp_dir()
            .join(format!("cwatch-names-{me}"))
            .display()
    );
    let m = wait_for("the hostile series", Duration::from_secs(30), || {
        let m = daemon.metrics().map_err(|e| e.to_string())?;
        let labels = [
            ("pid", pid.as_str()),
            ("comm", COMM_EXACT),
            ("unit", unit.as_str()),
            ("exe", exe_exact.as_str()),
        ];
        match m.get(FAMILY, &labels) {
            Some(3.0) => Ok(m),
            _ => Err(m.text.clone()),
        }
    })
    .unwrap();
    assert!(
        !m.text.lines().any(|l| l.starts_with("il")),
        "no sample split by the newline:\n{}",
        m.text
    );

    // The API: the same bytes, JSON-escaped.
    let api = daemon.sockets().unwrap();
    let mine: Vec<_> = api.iter().filter(|s| s["pid"] == client.pid).collect();
    assert_eq!(mine.len(), 3, "{api:?}");
    for s in &mine {
        assert_eq!(s["comm"], COMM_EXACT);
        assert!(
            s["holders"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["comm"] == COMM_EXACT),
            "{s}"
        );
    }

    // cwatch ls: one row per socket, the name escaped, no raw control byte.
    let ls = |args: &[&str]| crate::common::client(&daemon, "ls", args);
    let table = String::from_utf8(ls(&["--pid", &pid])).unwrap();
    let owner = format!("{pid}/{COMM_SHOWN}");
    assert_eq!(
        table.lines().filter(|l| l.contains(&owner)).count(),
        3 + 1,
        "three rows and the summary:\n{table}"
    );
    assert!(!table.bytes().any(|b| b == 0x1b), "{table:?}");
    assert_eq!(
        table.lines().count(),
        1 + 3 + 2 + 1 + 3 + 2,
        "header, rows, two summaries, total:\n{table}"
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_slice(&ls(&["--pid", &pid, "--json"])).unwrap();
    assert!(
        json.len() == 3 && json.iter().all(|s| s["comm"] == COMM_EXACT),
        "{json:?}"
    );

    // The log: the leak notice names it escaped, on one line.
    let log = wait_for("the leak notice", Duration::from_secs(30), || {
        let log = daemon.log();
        if log.contains(&format!("comm={COMM_SHOWN}")) {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "no raw escape character in the log:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("il")),
        "no line split by a name:\n{log}"
    );

    // doctor: a hostile path is shown escaped, one line per check.
    let pin = "/sys/fs/bpf/cwatch-test-\n\u{1b}[2Jx";
    let out = Command::new(cwatch_bin().unwrap())
        .args(["doctor", "--pin-dir", pin])
        .output()
        .unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(
        report.contains("pin directory /sys/fs/bpf/cwatch-test-\\n\\x1b[2Jx"),
        "{report}"
    );
    assert!(!report.contains('\u{1b}'), "{report:?}");
    drop((daemon, client, server));
}
