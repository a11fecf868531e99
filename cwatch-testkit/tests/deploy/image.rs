//! The image `cargo xtask image` built, as a file: its OCI archive
//! (`CWATCH_IMAGE_ARCHIVE`) carries the DaemonSet's image name and the
//! digest written beside it, holds one layer with nothing but
//! /usr/bin/cwatch, and that binary runs in an otherwise empty root (no
//! loader, no libraries). containerd — what a Kubernetes node imports an
//! archive with — takes it under the DaemonSet's name, in kubelet's `k8s.io`
//! namespace. The run against the kernel is image_run.rs.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use cwatch_testkit::wait_for;
use serde_json::Value;

use crate::{
    common::{TempDir, repo_file, run_ok, serial, tool},
    kubernetes::as_json,
};

/// The name `cargo xtask image` gives the image.
pub fn reference() -> String {
    format!("localhost/cwatch:{}", env!("CARGO_PKG_VERSION"))
}

/// The archive under test: `CWATCH_IMAGE_ARCHIVE` (set by `cargo xtask
/// test`), else where `cargo xtask image` leaves it.
pub fn archive() -> PathBuf {
    let path = std::env::var_os("CWATCH_IMAGE_ARCHIVE").map_or_else(
        || {
            repo_file(&format!(
                "target/image/cwatch-{}.oci.tar",
                env!("CARGO_PKG_VERSION")
            ))
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no image archive at {}: run `cargo xtask image` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// The DaemonSet's container.
pub fn daemonset_container() -> Value {
    as_json("daemonset.yaml")["spec"]["template"]["spec"]["containers"][0].clone()
}

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs/sha256").join(hex)
}

#[test]
fn the_archive_is_the_daemonsets_image_with_only_the_static_binary() {
    let _serial = serial();
    let archive = archive();
    let container = daemonset_container();
    assert_eq!(container["image"], reference().as_str());
    if let Ok(built) = std::env::var("CWATCH_IMAGE") {
        assert_eq!(
            container["image"],
            built.as_str(),
            "cargo xtask image built {built}"
        );
    }

    // The digest beside the archive is its manifest's, as skopeo reads it.
    let digest_file = PathBuf::from(format!("{}.digest", archive.display()));
    let digest = std::fs::read_to_string(&digest_file)
        .unwrap_or_else(|e| panic!("{}: {e}", digest_file.display()))
        .trim()
        .to_string();
    let transport = format!("oci-archive:{}", archive.display());
    let inspect: Value = serde_json::from_str(&run_ok(
        Command::new(tool("skopeo")).args(["inspect", &transport]),
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    if let Ok(built) = std::env::var("CWATCH_IMAGE_DIGEST") {
        assert_eq!(digest, built);
    }
    assert_eq!(inspect["Os"], "linux");
    let config: Value = serde_json::from_str(&run_ok(
        Command::new(tool("skopeo")).args(["inspect", "--config", &transport]),
    ))
    .unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/cwatch"])
    );
    assert_eq!(config["config"]["User"], "0:0");
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(
        config["config"]["ExposedPorts"]
            .get(format!("{port}/tcp"))
            .is_some(),
        "the image does not expose the DaemonSet's port {port}: {config}"
    );

    // The layout: the DaemonSet's name on the one manifest, one layer.
    let dir = TempDir::new("image");
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    );
    let index = json_file(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        container["image"]
    );
    assert_eq!(manifests[0]["digest"], digest.as_str());
    let manifest = json_file(&blob(&layout, manifests[0]["digest"].as_str().unwrap()));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
    let listing = run_ok(Command::new("tar").arg("-tzf").arg(&layer));
    let mut files: Vec<&str> = listing.lines().collect();
    files.sort();
    assert_eq!(files, ["usr/", "usr/bin/", "usr/bin/cwatch"]);

    // The binary needs nothing else: it runs in a root holding only itself.
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&root),
    );
    let version = run_ok(
        Command::new(tool("chroot"))
            .arg(&root)
            .args(["/usr/bin/cwatch", "--version"])
            .env_clear(),
    );
    assert_eq!(
        version.trim(),
        format!("cwatch {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A containerd of the test's own (its own root, state and socket; no CRI
/// plugin), stopped by pid when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
    dir: TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = TempDir::new("containerd");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{1}\"\n",
                dir.path().display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new(tool("containerd"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let containerd = Containerd { child, socket, dir };
        wait_for(
            "containerd's socket",
            Duration::from_secs(30),
            || match containerd.ctr(&["version"]).status() {
                Ok(s) if s.success() => Ok(()),
                other => Err(format!("{other:?}: {}", containerd.log())),
            },
        )
        .unwrap();
        containerd
    }

    /// `ctr` against this containerd, in kubelet's namespace.
    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool("ctr"));
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn containerd_imports_the_archive_under_the_daemonsets_image_name() {
    let _serial = serial();
    let archive = archive();
    let image = daemonset_container()["image"].as_str().unwrap().to_string();
    let containerd = Containerd::start();
    let mut import = containerd.ctr(&["images", "import"]);
    import.arg(&archive);
    run_ok(&mut import);
    let listed = run_ok(&mut containerd.ctr(&["images", "ls"]));
    let digest = std::fs::read_to_string(format!("{}.digest", archive.display())).unwrap();
    assert!(
        listed.lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.next() == Some(image.as_str()) && fields.nth(1) == Some(digest.trim())
        }),
        "containerd does not hold {image} at {}:\n{listed}",
        digest.trim()
    );
    // kubelet runs it from the unpacked snapshot: the import unpacked it.
    let snapshots = run_ok(&mut containerd.ctr(&["snapshots", "ls"]));
    assert!(
        snapshots.lines().count() > 1,
        "nothing unpacked:\n{snapshots}"
    );
}
