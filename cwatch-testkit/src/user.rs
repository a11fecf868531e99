//! Running programs as another, unprivileged user: `setpriv` arguments for
//! a uid that is not root (with no capability, or with exactly a given set
//! as a systemd unit's `User=` + `AmbientCapabilities=` grants them), and
//! binaries such a user can execute.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

/// `nobody`: a user with no privilege at all.
pub const NOBODY: u32 = 65534;
/// A uid no account uses, standing in for a dedicated service user.
pub const SERVICE_UID: u32 = 64_999;

/// `setpriv` arguments that run a program as `uid` (group `uid`, no
/// supplementary groups) with no capability.
pub fn as_user(uid: u32) -> Vec<String> {
    [
        "setpriv".to_string(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        "--".into(),
    ]
    .to_vec()
}

/// `setpriv` arguments that run a program as `uid` with exactly `caps`
/// (names like `CAP_BPF`) in its bounding, inheritable and ambient sets:
/// what systemd gives a unit with `User=`, `CapabilityBoundingSet=` and
/// `AmbientCapabilities=`.
pub fn as_user_with(uid: u32, caps: &[&str]) -> Vec<String> {
    let mut set = String::from("-all");
    for cap in caps {
        let name = cap.trim().to_ascii_lowercase();
        set += ",+";
        set += name.strip_prefix("cap_").unwrap_or(&name);
    }
    [
        "setpriv".to_string(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
    .to_vec()
}

/// Whether every user may execute `path` (and search every directory on
/// the way to it).
fn executable_by_all(path: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    mode(path).is_ok_and(|m| m & 0o001 != 0)
        && path
            .ancestors()
            .skip(1)
            .all(|dir| mode(dir).is_ok_and(|m| m & 0o001 != 0))
}

/// `binary`, or a copy of it that every user can execute when the original
/// sits where they cannot reach it (a checkout under a private home).
pub fn executable_for_all(binary: &Path) -> anyhow::Result<PathBuf> {
    if executable_by_all(binary) {
        return Ok(binary.to_path_buf());
    }
    let dir = std::env::temp_dir().join(format!("cwatch-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let name = binary
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} has no file name", binary.display()))?;
    let copy = dir.join(name);
    if !copy.exists() {
        std::fs::copy(binary, &copy)?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(copy)
}
