//! The DaemonSet's pod, on this machine: a podman store, run root and state
//! of the test's own (what the image archive holds is all it has), the
//! pod's `podman run` arguments read from deploy/kubernetes/ (its
//! arguments, environment, ConfigMap, host paths, read-only root, no new
//! privileges, exactly its capabilities, memory limit, the node's pid
//! namespace and a network namespace of its own: `--network none`, nothing
//! but loopback), the node's pin directory as a mount point, and HTTP from
//! the host into the container's network namespace. Containers are removed
//! by the name the test gave them.
//!
//! The runtime is runc (see xtask's container_tools.rs for why not crun),
//! with explicit `--ulimit`s: podman asks the runtime for 1048576 open files
//! and processes by default and lowers its own RLIMIT_NPROC, soft and hard,
//! to kernel.pid_max when it starts; where root lacks CAP_SYS_RESOURCE (as
//! on the project's build hosts) no limit can be raised above what podman
//! then holds, and the runtime's setrlimit fails with EPERM.
use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc::{Sender, channel},
    time::Duration,
};

use rustix::process::{Resource, getrlimit};

use crate::{
    common::{TempDir, output, run_ok, tool},
    kubernetes::as_json,
};

/// podman with a store, run root and state of the test's own: what the
/// archive holds is all it has.
pub struct Podman {
    pub dir: TempDir,
}

impl Podman {
    pub fn cmd(&self) -> Command {
        let dir = self.dir.path();
        let mut cmd = Command::new(tool("podman"));
        cmd.arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(["--cgroup-manager", "cgroupfs"]);
        cmd
    }
}

/// The container, removed (stopped by its name, which this test chose)
/// when dropped.
pub struct Container<'a> {
    pub podman: &'a Podman,
    pub name: String,
    /// The host directory mounted at the container's pin directory.
    pub pins: PathBuf,
}

impl Container<'_> {
    pub fn logs(&self) -> String {
        let out = output(self.podman.cmd().args(["logs", &self.name]));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The container's process, as a host pid.
    pub fn pid(&self) -> u32 {
        let text =
            run_ok(
                self.podman
                    .cmd()
                    .args(["inspect", "--format", "{{.State.Pid}}", &self.name]),
            );
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("podman inspect said {text:?}: {e}"))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = output(
            self.podman
                .cmd()
                .args(["rm", "--force", "--time", "20", &self.name]),
        );
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// The node's pin directory as a mount point: the DaemonSet mounts the
/// node's bpffs read-only and its pin directory on top, so that directory
/// must exist on the node (kubelet's `DirectoryOrCreate` makes it). The test
/// mounts its own pin directory there; one it had to create is removed after
/// (if still empty).
pub struct PinMountPoint {
    created: bool,
}

pub const NODE_PINS: &str = "/sys/fs/bpf/cwatch";

impl PinMountPoint {
    pub fn ensure() -> PinMountPoint {
        let created = !Path::new(NODE_PINS).is_dir();
        if created {
            std::fs::create_dir(NODE_PINS).unwrap_or_else(|e| panic!("creating {NODE_PINS}: {e}"));
        }
        PinMountPoint { created }
    }
}

impl Drop for PinMountPoint {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir(NODE_PINS);
        }
    }
}

/// `--ulimit`s the runtime can set here: the hard limits podman holds once
/// it has lowered RLIMIT_NPROC to kernel.pid_max.
pub fn ulimits() -> Vec<String> {
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let hard = |resource| getrlimit(resource).maximum.unwrap_or(u64::MAX);
    let nofile = hard(Resource::Nofile);
    let nproc = hard(Resource::Nproc).min(pid_max);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// `podman run` arguments for the DaemonSet's pod; `pins` stands in for
/// the node's pin directory, `config` for the ConfigMap's.
pub fn pod_arguments(pins: &Path, config: &Path) -> Vec<String> {
    let pod = &as_json("daemonset.yaml")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    let mut args: Vec<String> = Vec::new();
    let flag = |on: bool, yes: &str, no: &str| if on { yes } else { no }.to_string();
    args.push(flag(pod["hostPID"] == true, "--pid=host", "--pid=private"));
    args.push(flag(
        pod["hostNetwork"] == true,
        "--network=host",
        "--network=none",
    ));
    assert_eq!(sc["privileged"], false);
    args.push("--cap-drop=all".into());
    for cap in sc["capabilities"]["add"].as_array().unwrap() {
        args.push(format!("--cap-add={}", cap.as_str().unwrap()));
    }
    if sc["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".into());
    }
    args.push(format!("--user={}:{}", sc["runAsUser"], sc["runAsGroup"]));
    for env in container["env"].as_array().unwrap() {
        args.push(format!(
            "--env={}={}",
            env["name"].as_str().unwrap(),
            env["value"].as_str().unwrap()
        ));
    }
    if let Some(memory) = container["resources"]["limits"]["memory"].as_str() {
        args.push(format!(
            "--memory={}",
            memory.trim_end_matches('i').to_lowercase()
        ));
    }
    for mount in container["volumeMounts"].as_array().unwrap() {
        let target = mount["mountPath"].as_str().unwrap();
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let source = if volume["configMap"].is_object() {
            config.to_path_buf()
        } else if target == NODE_PINS {
            pins.to_path_buf()
        } else {
            PathBuf::from(volume["hostPath"]["path"].as_str().unwrap())
        };
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        args.push(format!("--volume={}:{target}{ro}", source.display()));
    }
    args
}

pub type Answer = Result<(u16, String), String>;

/// HTTP from the host into the container's network namespace: one thread
/// enters it (setns applies to the calling thread only) and serves every
/// request over one keep-alive connection.
pub struct NetnsHttp {
    requests: Sender<(String, Sender<Answer>)>,
}

impl NetnsHttp {
    pub fn new(pid: u32, port: u64) -> NetnsHttp {
        let netns = File::open(format!("/proc/{pid}/ns/net")).unwrap();
        let (requests, incoming) = channel::<(String, Sender<Answer>)>();
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                netns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the container's network namespace");
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .max_idle_connections_per_host(1)
                .max_idle_age(Duration::from_secs(3600))
                .build()
                .into();
            for (path, reply) in incoming {
                let answer = agent
                    .get(&format!("http://127.0.0.1:{port}{path}"))
                    .call()
                    .map_err(|e| e.to_string())
                    .and_then(|mut r| {
                        let status = r.status().as_u16();
                        let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
                        Ok((status, body))
                    });
                let _ = reply.send(answer);
            }
        });
        NetnsHttp { requests }
    }

    pub fn get(&self, path: &str) -> Answer {
        let (reply, answer) = channel();
        self.requests
            .send((path.to_string(), reply))
            .map_err(|e| e.to_string())?;
        answer.recv().map_err(|e| e.to_string())?
    }
}
