//! The Kubernetes manifests, validated offline: the core objects
//! (Namespace, ConfigMap, DaemonSet, Service) with kubernetes-validate
//! (PyPI; bundled Kubernetes JSON schemas, strict: unknown fields are
//! errors), the ServiceMonitor with the prometheus-operator CRD schema
//! bundled in @kubernetes-models/prometheus-operator (npm; it checks types
//! and required fields, not unknown fields). Broken copies must fail both.
//! Then what matters for cwatch: hostPID, not privileged, the capability
//! list (see caps.rs), bpffs (read-only but for the pin directory) and
//! tracefs mounted, the image `cargo xtask image` builds, the config
//! listening on the pod address, and the ServiceMonitor selecting the
//! Service's port. resources.rs checks requests and limits against the bench.
use std::{path::PathBuf, process::Command};

use cwatch_daemon::cli::RunArgs;
use serde_json::Value;

use crate::common::{TempDir, output, read_repo_file, repo_file, run_ok, serial, tool};

const CORE: &[&str] = &[
    "namespace.yaml",
    "configmap.yaml",
    "daemonset.yaml",
    "service.yaml",
];
const OPERATOR: &str = "servicemonitor.yaml";

/// The npm tree `cargo xtask setup` installs the operator schemas into.
fn node_tools() -> PathBuf {
    let dir = PathBuf::from(std::env::var("CWATCH_NODE_TOOLS").unwrap_or_else(|_| {
        repo_file("target/deploy-tools")
            .to_string_lossy()
            .into_owned()
    }));
    assert!(
        dir.join("node_modules/@kubernetes-models/prometheus-operator")
            .is_dir(),
        "{} has no @kubernetes-models/prometheus-operator: run `cargo xtask setup`",
        dir.display()
    );
    dir
}

fn k8s_validate(file: &std::path::Path) -> (bool, String) {
    let out = output(
        Command::new(tool("python3"))
            .args(["-m", "kubernetes_validate", "--strict"])
            .arg(file),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // kubernetes-validate exits 0 on a kind it has no schema for: only
    // "passed" counts.
    (
        out.status.success() && text.contains("passed") && !text.contains("WARN"),
        text,
    )
}

fn operator_validate(file: &std::path::Path) -> (bool, String) {
    let tools = node_tools();
    let script = tools.join("validate_operator.mjs");
    std::fs::copy(
        repo_file("cwatch-testkit/tests/deploy/validate_operator.mjs"),
        &script,
    )
    .unwrap();
    let out = output(Command::new(tool("node")).arg(&script).arg(file));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && text.contains("valid: "), text)
}

/// A manifest as JSON (PyYAML, which kubernetes-validate brings).
pub(crate) fn as_json(name: &str) -> Value {
    let text = run_ok(
        Command::new(tool("python3"))
            .args([
                "-c",
                "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(repo_file(&format!("deploy/kubernetes/{name}"))),
    );
    serde_json::from_str(&text).unwrap()
}

#[test]
fn manifests_validate_offline_and_broken_ones_do_not() {
    let _serial = serial();
    for name in CORE {
        let (ok, text) = k8s_validate(&repo_file(&format!("deploy/kubernetes/{name}")));
        assert!(ok, "{name}: {text}");
    }
    let (ok, text) = operator_validate(&repo_file(&format!("deploy/kubernetes/{OPERATOR}")));
    assert!(ok, "{OPERATOR}: {text}");

    let dir = TempDir::new("k8s");
    let broken_ds = dir.path().join("daemonset.yaml");
    std::fs::write(
        &broken_ds,
        read_repo_file("deploy/kubernetes/daemonset.yaml")
            .replace("hostPID: true", "hostPID: true\n      hostPIDs: true"),
    )
    .unwrap();
    let (ok, text) = k8s_validate(&broken_ds);
    assert!(!ok, "an unknown field passed: {text}");
    let broken_sm = dir.path().join("servicemonitor.yaml");
    std::fs::write(
        &broken_sm,
        read_repo_file("deploy/kubernetes/servicemonitor.yaml")
            .replace("interval: 15s", "interval: 15"),
    )
    .unwrap();
    let (ok, text) = operator_validate(&broken_sm);
    assert!(!ok, "a number for a duration passed: {text}");
}

#[test]
fn daemonset_is_what_cwatch_needs_and_no_more() {
    let _serial = serial();
    let ds = as_json("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], false);
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut add: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    add.sort();
    let mut want = crate::common::cap_names(cwatch_daemon::daemon::caps::REQUIRED);
    want.sort();
    assert_eq!(add, want);
    let mount = |path: &str| {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
            .clone()
    };
    let host_path = |path: &str| {
        let volume = mount(path)["name"].clone();
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap()["hostPath"]["path"]
            .clone()
    };
    let read_only = |path: &str| mount(path)["readOnly"] == true;
    // As the unit: bpffs read-only but for the pin directory.
    assert_eq!(host_path("/sys/fs/bpf"), "/sys/fs/bpf");
    assert!(read_only("/sys/fs/bpf"));
    assert_eq!(host_path("/sys/fs/bpf/cwatch"), "/sys/fs/bpf/cwatch");
    assert!(!read_only("/sys/fs/bpf/cwatch"));
    assert_eq!(host_path("/sys/kernel/tracing"), "/sys/kernel/tracing");
    assert!(read_only("/sys/kernel/tracing"));
    // The image `cargo xtask image` builds (image.rs checks the archive).
    assert_eq!(container["image"], crate::image::reference().as_str());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");

    // The config it mounts is valid for this cwatch, listening on the pod.
    let cm = as_json("configmap.yaml");
    let toml = cm["data"]["cwatch.toml"].as_str().unwrap();
    assert!(toml.contains("listen = \"0.0.0.0:9478\""), "{toml}");
    let dir = TempDir::new("k8s-config");
    std::fs::write(dir.path().join("cwatch.toml"), toml).unwrap();
    let config = cwatch_daemon::cli::resolve::run_config(&RunArgs {
        config: Some(dir.path().join("cwatch.toml")),
        ..RunArgs::default()
    })
    .unwrap_or_else(|e| panic!("the ConfigMap's cwatch.toml: {e}"));
    assert_eq!(config.listen.to_string(), "0.0.0.0:9478");

    // The ServiceMonitor scrapes the Service's named port, job "cwatch".
    let svc = as_json("service.yaml");
    let sm = as_json(OPERATOR);
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["metadata"]["labels"]
    );
    assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
    assert_eq!(
        svc["metadata"]["labels"]["app.kubernetes.io/name"],
        "cwatch"
    );
}
