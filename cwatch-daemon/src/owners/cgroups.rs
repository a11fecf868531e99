/*!
The processes of a socket's cgroup: where its holder most likely is. The
kernel records the socket's cgroup v2 id (the inode number of the cgroup's
directory in cgroupfs); this finds the directory once (a walk of the cgroup
tree, cached) and lists `cgroup.procs`. On a systemd host that is the unit's
processes, on a container host the container's: a handful, instead of every
process on the host. The root cgroup narrows nothing and gives no
candidates.
*/
use std::{collections::HashMap, fs, os::unix::fs::MetadataExt, path::PathBuf};

use super::procfs::ProcRoot;

/// Cgroup ids to directories, learned from the cgroup2 mount.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// The cgroup2 mount point, once found (`None`: none mounted).
    root: Option<Option<PathBuf>>,
    /// The root cgroup's id, once read.
    root_id: Option<u64>,
    paths: HashMap<u64, PathBuf>,
    /// Ids not found at the last walk: not looked for again until another
    /// unknown id makes a new walk.
    misses: std::collections::HashSet<u64>,
}

/// The cgroup2 mount point in a `mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Pids in a `cgroup.procs` text.
pub fn procs(text: &str) -> Vec<u32> {
    text.split_ascii_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Cgroups {
    fn root(&mut self, proc: &ProcRoot) -> Option<PathBuf> {
        self.root
            .get_or_insert_with(|| {
                let mountinfo = fs::read_to_string(proc.path("self/mountinfo")).ok()?;
                cgroup2_mount(&mountinfo)
            })
            .clone()
    }

    /// The processes of cgroup `id`; empty for the root cgroup, an unknown
    /// id, or no cgroup2.
    pub fn processes(&mut self, proc: &ProcRoot, id: u64) -> Vec<u32> {
        if id == 0 {
            return Vec::new();
        }
        let Some(root) = self.root(proc) else {
            return Vec::new();
        };
        if self.root_id.is_none() {
            self.root_id = fs::metadata(&root).ok().map(|m| m.ino());
        }
        if self.root_id == Some(id) {
            return Vec::new();
        }
        if !self.paths.contains_key(&id) && !self.misses.contains(&id) {
            self.learn(&root);
            if !self.paths.contains_key(&id) {
                self.misses.insert(id);
            }
        }
        match self.paths.get(&id) {
            Some(dir) => fs::read_to_string(dir.join("cgroup.procs"))
                .map(|t| procs(&t))
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Walks the cgroup tree under `root`, recording every directory's id.
    fn learn(&mut self, root: &std::path::Path) {
        self.paths.clear();
        self.misses.clear();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Ok(meta) = entry.metadata() {
                        self.paths.insert(meta.ino(), entry.path());
                    }
                    stack.push(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_procs_parse() {
        let info = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
35 22 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
36 22 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("22 1 0:21 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        assert_eq!(procs("12\n34\nx\n"), vec![12, 34]);
    }

    #[test]
    fn a_cgroup_tree_gives_its_processes_and_the_root_none() {
        let proc = super::super::procfs::fixture::FakeProc::new();
        let tree = proc.dir().join("cgroupfs");
        let unit = tree.join("system.slice/order-svc.service");
        fs::create_dir_all(&unit).unwrap();
        fs::write(unit.join("cgroup.procs"), "41\n42\n").unwrap();
        fs::create_dir_all(proc.dir().join("self")).unwrap();
        fs::write(
            proc.dir().join("self/mountinfo"),
            format!("35 22 0:30 / {} rw - cgroup2 cgroup2 rw\n", tree.display()),
        )
        .unwrap();
        let root = proc.root();
        let mut cgroups = Cgroups::default();
        let id = fs::metadata(&unit).unwrap().ino();
        assert_eq!(cgroups.processes(&root, id), vec![41, 42]);
        let root_id = fs::metadata(&tree).unwrap().ino();
        assert!(
            cgroups.processes(&root, root_id).is_empty(),
            "the root narrows nothing"
        );
        assert!(cgroups.processes(&root, 0).is_empty());
        assert!(cgroups.processes(&root, 1).is_empty(), "unknown id");
    }
}
