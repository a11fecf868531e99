//! Capabilities, thread by thread: once ready, every thread of the daemon
//! plays a known role (`caps::Role`, by thread name) and holds exactly that
//! role's capabilities of what it was given — the threads that serve HTTP
//! and the runtime none at all (the HTTP ones from their first answer, before
//! the daemon is ready), the /proc and namespace workers only theirs —
//! read from /proc/<pid>/task/*/status. Started with exactly the unit's set
//! (`caps::REQUIRED`, through setpriv), as root or as a dedicated user, it
//! works: it sees a leak of another user's process, names its owner and its
//! executable (read for the scrape by the labels thread). With less than it
//! needs to load, it refuses to start with one line saying why. The unit
//! file and the DaemonSet grant exactly `caps::REQUIRED`.
use std::{collections::BTreeMap, time::Duration};

use cwatch_daemon::daemon::caps::{self, REQUIRED, Role};
use cwatch_testkit::{
    daemon::{Daemon, cwatch_bin, private_pin_dir, setpriv_exactly},
    load::{Load, load_bin},
    user, wait_for,
};

use crate::common::{cap_names, read_repo_file, serial};

/// Every thread of `pid` by role: each has a known role and holds exactly
/// what its role keeps of `granted` (inheritable and ambient empty). Returns
/// how many threads play each role.
pub(crate) fn assert_threads_by_role(pid: u32, granted: u64) -> BTreeMap<&'static str, usize> {
    let threads = caps::threads_of(&pid.to_string());
    assert!(
        threads.len() > 1,
        "expected a multi-threaded daemon: {threads:?}"
    );
    let mut roles = BTreeMap::new();
    for t in &threads {
        let role = caps::role_of(pid, t).unwrap_or_else(|| {
            panic!(
                "thread {} ({:?}) plays no known role: {threads:?}",
                t.tid, t.name
            )
        });
        let want = caps::mask(role.keeps()) & granted;
        assert_eq!(
            (t.effective, t.permitted, t.inheritable, t.ambient),
            (want, want, 0, 0),
            "thread {} ({}, {role:?}) holds effective {:?}, permitted {:?}; its role keeps {:?}",
            t.tid,
            t.name,
            caps::names(t.effective),
            caps::names(t.permitted),
            caps::names(want)
        );
        *roles.entry(role.thread_name()).or_default() += 1;
    }
    for role in [
        Role::Main,
        Role::Http,
        Role::Runtime,
        Role::Owners,
        Role::Labels,
        Role::Reconcile,
    ] {
        assert!(
            roles.contains_key(role.thread_name()),
            "no {role:?} thread: {roles:?}"
        );
    }
    assert!(
        !roles.contains_key(Role::Start.thread_name()),
        "the start thread outlived the start: {roles:?}"
    );
    roles
}

/// The HTTP threads of `pid` hold nothing, whatever the others hold.
fn assert_http_threads_hold_nothing(pid: u32) {
    let threads = caps::threads_of(&pid.to_string());
    let http: Vec<_> = threads
        .iter()
        .filter(|t| t.name == Role::Http.thread_name())
        .collect();
    assert!(!http.is_empty(), "no HTTP thread: {threads:?}");
    for t in http {
        assert_eq!((t.effective, t.permitted), (0, 0), "HTTP thread {t:?}");
    }
}

/// Started under `wrapper` (which grants `granted`), the daemon answers
/// HTTP from threads holding nothing, gets ready, limits every thread to
/// its role, and sees a leak of another user's process with its owner and
/// executable.
fn works_with(bin: &std::path::Path, wrapper: &[String], granted: u64, pin_dir: &str) {
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::spawn_bin(
        bin,
        &wrapper,
        &[],
        &["--leak-after", "1s", "--label", "exe", "--pin-dir", pin_dir],
    )
    .unwrap();
    wait_for("a first answer", Duration::from_secs(60), || {
        daemon.get("/healthz").map_err(|e| e.to_string())
    })
    .unwrap();
    assert_http_threads_hold_nothing(daemon.pid);
    daemon.wait_ready(Duration::from_secs(60)).unwrap();
    assert_threads_by_role(daemon.pid, granted);

    // A leak held by another user (nobody): its fds, its exe and its
    // namespace are not readable without the capabilities the workers keep.
    let load = user::executable_for_all(&load_bin().unwrap()).unwrap();
    let port = cwatch_testkit::daemon::free_port().unwrap();
    let inst = format!("127.0.0.1:{port}");
    let mut server = Load::server(std::slice::from_ref(&inst)).unwrap();
    let nobody = user::as_user(user::NOBODY);
    let nobody: Vec<&str> = nobody.iter().map(String::as_str).collect();
    let args: Vec<String> = [
        "client",
        "--comm",
        "capleak",
        "--on-eof",
        "leak",
        "--connect",
        &inst,
        "--count",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut client = Load::spawn_bin(&load, &nobody, &args).unwrap();
    client.expect("connected", Duration::from_secs(60)).unwrap();
    server
        .ask(&format!("wait-accepted {inst} 20"), "accepted")
        .unwrap();
    server.ask(&format!("close {inst}"), "closed").unwrap();
    let exe = load.display().to_string();
    let labels = [
        ("pid", client.pid.to_string()),
        ("comm", "capleak".into()),
        ("exe", exe),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wait_for(
        "20 leaked sockets of capleak, with its exe",
        Duration::from_secs(20),
        || {
            let m = daemon.metrics().map_err(|e| e.to_string())?;
            match m.get("cwatch_process_leaked_sockets", &labels) {
                Some(20.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", daemon.log()));
    let held: Vec<_> = daemon
        .sockets()
        .unwrap()
        .into_iter()
        .filter(|s| s["peer_port"] == port)
        .collect();
    assert_eq!(held.len(), 20);
    assert!(
        held.iter()
            .all(|s| s["fd"].is_number() && s["pid"] == client.pid),
        "every fd of nobody's process found: {held:?}"
    );
    // Still so after serving scrapes and API calls (no thread regained
    // anything, new HTTP and blocking threads started with nothing).
    let roles = assert_threads_by_role(daemon.pid, granted);
    println!("threads by role: {roles:?}");
}

#[test]
fn root_daemon_threads_keep_only_their_role() {
    let _serial = serial();
    let dir = private_pin_dir();
    works_with(&cwatch_bin().unwrap(), &[], u64::MAX, dir.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn works_with_exactly_the_required_set() {
    let _serial = serial();
    let names = cap_names(REQUIRED);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = private_pin_dir();
    works_with(
        &cwatch_bin().unwrap(),
        &setpriv_exactly(&names),
        caps::mask(REQUIRED),
        dir.to_str().unwrap(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn works_as_a_dedicated_user_with_the_units_capabilities() {
    let _serial = serial();
    // What deploy/systemd/cwatch.service sets up: User=cwatch with the
    // required set as ambient capabilities, the pin directory its own.
    let unit = read_repo_file("deploy/systemd/cwatch.service");
    assert!(
        unit.lines().any(|l| l == "User=cwatch"),
        "the unit runs as cwatch"
    );
    let names = cap_names(REQUIRED);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = private_pin_dir();
    let owned = std::process::Command::new("install")
        .args([
            "-d",
            "-m",
            "0700",
            "-o",
            &user::SERVICE_UID.to_string(),
            "-g",
            &user::SERVICE_UID.to_string(),
        ])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(owned.success());
    let bin = user::executable_for_all(&cwatch_bin().unwrap()).unwrap();
    works_with(
        &bin,
        &user::as_user_with(user::SERVICE_UID, &names),
        caps::mask(REQUIRED),
        dir.to_str().unwrap(),
    );
    let meta = std::fs::metadata(dir.join("CLOSE_WAIT")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        user::SERVICE_UID,
        "the pins belong to the service user"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_to_start_without_bpf_or_perfmon() {
    let _serial = serial();
    // Each of CAP_BPF and CAP_PERFMON is needed to load (CAP_SYS_ADMIN would
    // stand in for both, so it is left out here too).
    for missing in [caps::Capability::CAP_BPF, caps::Capability::CAP_PERFMON] {
        let fewer: Vec<String> = cap_names(REQUIRED)
            .into_iter()
            .filter(|c| *c != missing.to_string() && c != "CAP_SYS_ADMIN")
            .collect();
        let fewer: Vec<&str> = fewer.iter().map(String::as_str).collect();
        let wrapper = setpriv_exactly(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let daemon = Daemon::spawn_full(&wrapper, &[], &[]).unwrap();
        let status = daemon
            .wait_exit_keeping_log(Duration::from_secs(60))
            .unwrap();
        // A permission problem is the operator's to fix: one line naming
        // the missing capability, exit code 2, nothing loaded.
        assert_eq!(status.0.code(), Some(2), "without {missing}: {}", status.1);
        assert!(
            status.1.contains(&missing.to_string()),
            "names {missing}: {}",
            status.1
        );
    }
}

/// The unit's `Key=` line, split on spaces.
fn unit_list(unit: &str, key: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="));
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn unit_and_daemonset_grant_exactly_the_required_set() {
    let _serial = serial();
    let mut want = cap_names(REQUIRED);
    want.sort();
    let unit = read_repo_file("deploy/systemd/cwatch.service");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let mut got = unit_list(&unit, key);
        got.sort();
        assert_eq!(got, want, "{key}= in deploy/systemd/cwatch.service");
    }
    let ds = read_repo_file("deploy/kubernetes/daemonset.yaml");
    let add: Vec<String> = ds
        .lines()
        .skip_while(|l| l.trim() != "add:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(|c| format!("CAP_{c}")))
        .collect();
    let mut add_sorted = add.clone();
    add_sorted.sort();
    assert_eq!(add_sorted, want, "capabilities.add in the DaemonSet");
    assert!(
        ds.contains("drop:\n                - ALL"),
        "the DaemonSet must drop ALL before adding"
    );
}
