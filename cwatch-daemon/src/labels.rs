/*!
Optional labels on the per-process metrics, learned from the owner's /proc
entry: `unit` (the systemd unit, from /proc/<pid>/cgroup), `container` (a
64-hex container id in the cgroup path: docker, containerd, CRI-O, podman,
kubepods) and `exe` (/proc/<pid>/exe). Also the process key: what one
per-process series stands for (a pid, all processes with one comm, or all
processes of one unit).

Lookups are cached per pid and checked against the process's start time, so
a reused pid never inherits another process's labels.
*/
use std::{collections::HashMap, fmt, str::FromStr};

/// One optional label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerLabel {
    Unit,
    Container,
    Exe,
}

impl OwnerLabel {
    pub fn name(self) -> &'static str {
        match self {
            OwnerLabel::Unit => "unit",
            OwnerLabel::Container => "container",
            OwnerLabel::Exe => "exe",
        }
    }
}

impl FromStr for OwnerLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unit" => Ok(OwnerLabel::Unit),
            "container" => Ok(OwnerLabel::Container),
            "exe" => Ok(OwnerLabel::Exe),
            _ => Err(format!("unknown label {s:?}; use unit, container or exe")),
        }
    }
}

impl fmt::Display for OwnerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one per-process series stands for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProcessKeyMode {
    /// One series per process (`pid`, `comm`): the contract's default.
    #[default]
    Pid,
    /// One series per process name, `pid="*"`: for hosts with pid churn.
    Comm,
    /// One series per systemd unit, `pid="*"`, `comm="*"`, with `unit`.
    Unit,
}

impl FromStr for ProcessKeyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pid" => Ok(ProcessKeyMode::Pid),
            "comm" => Ok(ProcessKeyMode::Comm),
            "unit" => Ok(ProcessKeyMode::Unit),
            _ => Err(format!("unknown process key {s:?}; use pid, comm or unit")),
        }
    }
}

impl fmt::Display for ProcessKeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProcessKeyMode::Pid => "pid",
            ProcessKeyMode::Comm => "comm",
            ProcessKeyMode::Unit => "unit",
        })
    }
}

/// Which optional labels are on, and the process key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelConfig {
    pub unit: bool,
    pub container: bool,
    pub exe: bool,
    pub process_key: ProcessKeyMode,
}

impl LabelConfig {
    pub fn set(&mut self, labels: &[OwnerLabel]) {
        self.unit = labels.contains(&OwnerLabel::Unit);
        self.container = labels.contains(&OwnerLabel::Container);
        self.exe = labels.contains(&OwnerLabel::Exe);
    }

    /// The labels switched on, in a fixed order.
    pub fn enabled(&self) -> Vec<OwnerLabel> {
        [
            (self.unit, OwnerLabel::Unit),
            (self.container, OwnerLabel::Container),
            (self.exe, OwnerLabel::Exe),
        ]
        .into_iter()
        .filter_map(|(on, l)| on.then_some(l))
        .collect()
    }

    /// The per-process families' label names: pid, comm, then the optional
    /// ones (`unit` always when keyed by unit).
    pub fn label_names(&self) -> Vec<&'static str> {
        let mut names = vec!["pid", "comm"];
        names.extend(self.extra_labels().iter().map(|l| l.name()));
        names
    }

    /// The optional labels the per-process families carry (`unit` always
    /// when keyed by unit), in label order.
    pub fn extra_labels(&self) -> Vec<OwnerLabel> {
        let mut extra = self.enabled();
        if self.process_key == ProcessKeyMode::Unit && !self.unit {
            extra.insert(0, OwnerLabel::Unit);
        }
        extra
    }

    /// Whether any lookup in /proc is needed.
    pub fn needs_proc(&self) -> bool {
        self.unit || self.container || self.exe || self.process_key == ProcessKeyMode::Unit
    }
}

/// What /proc says about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerInfo {
    pub unit: Option<String>,
    pub container: Option<String>,
    pub exe: Option<String>,
}

impl OwnerInfo {
    pub fn get(&self, label: OwnerLabel) -> &str {
        match label {
            OwnerLabel::Unit => self.unit.as_deref(),
            OwnerLabel::Container => self.container.as_deref(),
            OwnerLabel::Exe => self.exe.as_deref(),
        }
        .unwrap_or("")
    }

    /// Reads /proc/<pid>; a process that is gone has no labels.
    pub fn read(pid: u32) -> Self {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let path = cgroup_path(&cgroup);
        Self {
            unit: path.and_then(unit_of),
            container: path.and_then(container_of),
            exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|p| p.display().to_string()),
        }
    }
}

/// The process's cgroup path: the unified (v2) line, else systemd's v1 one.
pub fn cgroup_path(text: &str) -> Option<&str> {
    let mut v1 = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            if path != "/" {
                return Some(path);
            }
        } else if let Some((_, path)) = line.split_once(":name=systemd:") {
            v1 = Some(path);
        }
    }
    v1.filter(|p| *p != "/")
}

/// The innermost systemd unit in a cgroup path (`….service`, `….scope`, …).
pub fn unit_of(path: &str) -> Option<String> {
    const KINDS: &[&str] = &[".service", ".scope", ".socket", ".mount", ".swap"];
    path.split('/')
        .rev()
        .find(|seg| KINDS.iter().any(|k| seg.ends_with(k)))
        .map(str::to_string)
}

/// The last 64-hex-digit run in a cgroup path (docker-<id>.scope,
/// cri-containerd-<id>.scope, crio-<id>.scope, /docker/<id>, …).
pub fn container_of(path: &str) -> Option<String> {
    path.split(['/', '-', '.', ':'])
        .rev()
        .find(|seg| seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// Per-pid cache of [`OwnerInfo`], keyed by (pid, start time).
#[derive(Default)]
pub struct LabelCache {
    entries: HashMap<u32, (u64, OwnerInfo)>,
}

impl LabelCache {
    /// The labels of `pid`, read once per process lifetime.
    pub fn get(&mut self, pid: u32) -> &OwnerInfo {
        let start = start_time(pid);
        let stale = self.entries.get(&pid).is_none_or(|(s, _)| *s != start);
        if stale {
            self.entries.insert(pid, (start, OwnerInfo::read(pid)));
        }
        &self.entries.entry(pid).or_default().1
    }

    /// Forgets pids not in `live`.
    pub fn retain(&mut self, live: &std::collections::HashSet<u32>) {
        self.entries.retain(|pid, _| live.contains(pid));
    }
}

/// Field 22 of /proc/<pid>/stat (after the parenthesised comm), 0 if gone.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4fc73829f6e27fb8373435454eccecf14fc73829f6e27fb8373435454eccecf1";

    #[test]
    fn units_and_containers_from_cgroup_paths() {
        let v2 = "0::/system.slice/order-svc.service\n";
        assert_eq!(cgroup_path(v2), Some("/system.slice/order-svc.service"));
        assert_eq!(
            unit_of("/system.slice/order-svc.service").as_deref(),
            Some("order-svc.service")
        );
        let v1 = "9:name=systemd:/user.slice/user-0.slice/session-3.scope\n0::/\n";
        assert_eq!(
            cgroup_path(v1).and_then(unit_of).as_deref(),
            Some("session-3.scope")
        );
        let docker = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(container_of(&docker).as_deref(), Some(ID));
        assert_eq!(
            unit_of(&docker).as_deref(),
            Some(format!("docker-{ID}.scope").as_str())
        );
        let k8s = format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope");
        assert_eq!(container_of(&k8s).as_deref(), Some(ID));
        assert_eq!(container_of(&format!("/docker/{ID}")).as_deref(), Some(ID));
        assert_eq!(container_of("/system.slice/sshd.service"), None);
        assert_eq!(cgroup_path("0::/\n"), None);
        assert_eq!(unit_of("/"), None);
    }

    #[test]
    fn label_config_names_and_parsing() {
        let mut c = LabelConfig::default();
        assert_eq!(c.label_names(), vec!["pid", "comm"]);
        assert!(!c.needs_proc());
        c.set(&[OwnerLabel::Exe, OwnerLabel::Unit]);
        assert_eq!(c.label_names(), vec!["pid", "comm", "unit", "exe"]);
        let mut k = LabelConfig {
            process_key: ProcessKeyMode::Unit,
            ..Default::default()
        };
        assert_eq!(k.label_names(), vec!["pid", "comm", "unit"]);
        k.set(&[OwnerLabel::Container]);
        assert_eq!(k.label_names(), vec!["pid", "comm", "unit", "container"]);
        assert!("cgroup".parse::<OwnerLabel>().unwrap_err().contains("unit"));
        assert!("tid".parse::<ProcessKeyMode>().unwrap_err().contains("pid"));
    }

    #[test]
    fn our_own_process_reads_and_caches() {
        let me = std::process::id();
        let mut cache = LabelCache::default();
        let exe = std::env::current_exe().unwrap().display().to_string();
        assert_eq!(cache.get(me).exe.as_deref(), Some(exe.as_str()));
        assert!(start_time(me) > 0);
        cache.retain(&Default::default());
        assert!(cache.entries.is_empty());
        assert_eq!(OwnerInfo::read(u32::MAX), OwnerInfo::default());
    }
}
