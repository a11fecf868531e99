//! The image, run as the DaemonSet's pod (pod.rs) against the host kernel
//! and leaks made by `cwatch-load` on loopback, in the host's network
//! namespace: one leak from before the container started (found by its
//! start-up reconciliation, owners from the node's /proc), one made while it
//! runs (seen by its probes). /metrics and the API, read from the host
//! through the container's network namespace, must show both per process
//! and per peer as `ss` counts them, under the host's pids; the container
//! must be in the node's pid namespace, in a network namespace of its own,
//! and hold exactly the DaemonSet's capabilities.
use std::{path::PathBuf, time::Duration};

use cwatch_daemon::daemon::caps::{self, REQUIRED};
use cwatch_testkit::{daemon::free_port, load::Load, prom::Scrape, ss::SsSocket, wait_for};
use serde_json::Value;

use crate::{
    caps::assert_threads_by_role,
    common::{TempDir, run_ok, serial},
    image::{archive, daemonset_container},
    kubernetes::as_json,
    pod::{Container, NetnsHttp, PinMountPoint, Podman, pod_arguments, ulimits},
};

const WIDTH: usize = 40;

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// The sockets `client` holds in CLOSE_WAIT to `port`, once there are
/// `WIDTH` of them (ground truth: `ss`).
fn held_by(client: &Load, port: u16) -> Vec<SsSocket> {
    wait_for("ss: the leak", Duration::from_secs(10), || {
        let socks: Vec<_> = cwatch_testkit::ss::close_wait()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| s.peer.port() == port && s.users.iter().any(|u| u.pid == client.pid))
            .collect();
        if socks.len() == WIDTH {
            Ok(socks)
        } else {
            Err(format!("{} held", socks.len()))
        }
    })
    .unwrap()
}

/// One leak as the daemon must show it: `held` (all to one peer) under the
/// client's host pid and comm, and under its peer.
struct Leak<'a> {
    client: &'a Load,
    comm: &'a str,
    held: Vec<SsSocket>,
}

impl Leak<'_> {
    fn peer(&self) -> (String, String) {
        let peer = self.held[0].peer;
        assert!(self.held.iter().all(|s| s.peer == peer), "one peer");
        (peer.ip().to_string(), peer.port().to_string())
    }

    /// What /metrics shows of it: (process, peer) leaked gauges.
    fn leaked(&self, scrape: &Scrape) -> (Option<f64>, Option<f64>) {
        self.gauges(scrape, "leaked")
    }

    fn gauges(&self, scrape: &Scrape, what: &str) -> (Option<f64>, Option<f64>) {
        let pid = self.client.pid.to_string();
        let (addr, port) = self.peer();
        (
            scrape.get(
                &format!("cwatch_process_{what}_sockets"),
                &[("pid", &pid), ("comm", self.comm)],
            ),
            scrape.get(
                &format!("cwatch_peer_{what}_sockets"),
                &[("peer_addr", &addr), ("peer_port", &port)],
            ),
        )
    }

    /// The API lists the same sockets, by cookie, under the client's pid.
    fn check_api(&self, http: &NetnsHttp) {
        let (status, body) = http
            .get(&format!("/api/v1/sockets?pid={}", self.client.pid))
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let sockets: Vec<Value> = serde_json::from_str(&body).unwrap();
        let port = self.held[0].peer.port();
        let mut got: Vec<u64> = sockets
            .iter()
            .filter(|s| s["peer_port"] == port)
            .map(|s| {
                assert_eq!(s["pid"], self.client.pid, "{s}");
                s["cookie"].as_u64().unwrap()
            })
            .collect();
        let mut want: Vec<u64> = self.held.iter().map(|s| s.cookie).collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{} ({})", self.comm, self.client.pid);
    }
}

#[test]
fn the_image_runs_as_the_daemonset_says_and_counts_leaks_under_host_pids() {
    let _serial = serial();
    let dir = TempDir::new("pod");
    let podman = Podman {
        dir: TempDir::new("podman-store"),
    };
    let spec = daemonset_container();
    let image = spec["image"].as_str().unwrap().to_string();
    let loaded = run_ok(podman.cmd().arg("load").arg("--input").arg(archive()));
    assert!(
        loaded.contains(&image),
        "podman load did not give {image}: {loaded}"
    );

    // A leak from before the container starts: three instances, the first
    // goes away now.
    let port = free_port().unwrap();
    let instances: Vec<String> = (1..=3).map(|n| format!("127.0.4.{n}:{port}")).collect();
    let mut server = Load::server(&instances).unwrap();
    let early = Load::client("imgearly", &[(instances[0].clone(), WIDTH)], "leak").unwrap();
    server
        .ask(
            &format!("wait-accepted {} {WIDTH}", instances[0]),
            "accepted",
        )
        .unwrap();
    server
        .ask(&format!("close {}", instances[0]), "closed")
        .unwrap();
    let early = Leak {
        held: held_by(&early, port),
        client: &early,
        comm: "imgearly",
    };

    // The ConfigMap's files, and a pin directory of the test's own on bpffs
    // where the node's would be.
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for (file, text) in as_json("configmap.yaml")["data"].as_object().unwrap() {
        std::fs::write(config.join(file), text.as_str().unwrap()).unwrap();
    }
    let _mount_point = PinMountPoint::ensure();
    let pins = cwatch_testkit::daemon::private_pin_dir();
    std::fs::create_dir_all(&pins).unwrap();
    let name = format!("cwatch-image-test-{}", std::process::id());
    let container = Container {
        podman: &podman,
        name: name.clone(),
        pins: pins.clone(),
    };
    run_ok(
        podman
            .cmd()
            .args(["run", "--detach", "--name", &name])
            .args(ulimits())
            .args(pod_arguments(&pins, &config))
            .arg(&image)
            .args(
                spec["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap()),
            )
            // Flags override the ConfigMap: leaks show within the test.
            .args(["--leak-after", "2s"]),
    );

    let pid = container.pid();
    let http = NetnsHttp::new(pid, spec["ports"][0]["containerPort"].as_u64().unwrap());
    let probe = spec["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    wait_for(
        "the container's readiness probe",
        Duration::from_secs(60),
        || match http.get(probe) {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\ncontainer log:\n{}", container.logs()));

    // The node's pid namespace, a network namespace of its own, exactly the
    // DaemonSet's capabilities (once ready, each thread only its role's).
    let (host, me) = (std::process::id().to_string(), pid.to_string());
    assert_eq!(ns(&me, "pid"), ns(&host, "pid"));
    assert_ne!(ns(&me, "net"), ns(&host, "net"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(
        caps::status_mask(&status, "CapBnd:"),
        Some(caps::mask(REQUIRED))
    );
    assert_threads_by_role(pid, caps::mask(REQUIRED));

    // A leak while it runs: the second instance goes away, the third stays.
    let late = Load::client(
        "imgleak",
        &[(instances[1].clone(), WIDTH), (instances[2].clone(), WIDTH)],
        "leak",
    )
    .unwrap();
    for instance in &instances[1..] {
        server
            .ask(&format!("wait-accepted {instance} {WIDTH}"), "accepted")
            .unwrap();
    }
    server
        .ask(&format!("close {}", instances[1]), "closed")
        .unwrap();
    let late = Leak {
        held: held_by(&late, port),
        client: &late,
        comm: "imgleak",
    };

    let count = Some(WIDTH as f64);
    let scrape = wait_for("both leaks in /metrics", Duration::from_secs(60), || {
        let (status, body) = http.get("/metrics")?;
        let scrape = Scrape::parse(&body).map_err(|e| format!("{status}: {e:#}"))?;
        let seen = (early.leaked(&scrape), late.leaked(&scrape));
        if seen == ((count, count), (count, count)) {
            Ok(scrape)
        } else {
            Err(format!("early {:?}, late {:?}", seen.0, seen.1))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\ncontainer log:\n{}", container.logs()));
    for leak in [&early, &late] {
        assert_eq!(
            leak.gauges(&scrape, "close_wait"),
            (count, count),
            "{}",
            leak.comm
        );
        leak.check_api(&http);
    }
    let live = [
        ("peer_addr", "127.0.4.3"),
        ("peer_port", &*port.to_string()),
    ];
    assert_eq!(scrape.get("cwatch_peer_close_wait_sockets", &live), None);

    // It stops cleanly on the runtime's SIGTERM.
    run_ok(podman.cmd().args(["stop", "--time", "20", &name]));
    let logs = container.logs();
    assert!(logs.contains("stopped; probes detached"), "{logs}");
    let exit = run_ok(
        podman
            .cmd()
            .args(["inspect", "--format", "{{.State.ExitCode}}", &name]),
    );
    assert_eq!(exit.trim(), "0", "{logs}");
}
