/*!
The optional labels of the per-process metrics, learned from the owner's
/proc entry: `unit` (the systemd unit, from /proc/<pid>/cgroup), `container`
(a 64-hex container id in the cgroup path: docker, containerd, CRI-O,
podman, kubepods) and `exe` (/proc/<pid>/exe). Which ones are on is the
`labels` setting ([`crate::config::labels`]).

Lookups are cached per pid and checked against the process's start time, so
a reused pid never inherits another process's labels. The cache has a lock
of its own that is never held while `/proc` is read: a scrape asks for the
labels of the pids it needs once it has let go of the table, and a slow
`/proc` delays only that scrape.

The threads that serve scrapes hold no capability, and `/proc/<pid>/exe` of
another user's process (or of one with more capabilities) needs
`CAP_SYS_PTRACE`. In the daemon the cache therefore reads what it lacks
through a [`LabelReader`]: a thread of its own that may read every process's
entry, asked for a batch of pids and answering with their labels. The scrape
waits for that answer holding no lock.
*/
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::procfs::ProcRoot;
use crate::config::labels::OwnerLabel;

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

    /// Reads `pid`'s entry; a process that is gone has no labels.
    pub fn read(proc: &ProcRoot, pid: u32) -> Self {
        let cgroup = proc.cgroup(pid).unwrap_or_default();
        let path = cgroup_path(&cgroup);
        Self {
            unit: path.and_then(unit_of),
            container: path.and_then(container_of),
            exe: proc.exe(pid),
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

/// How long a scrape waits for the reader thread before it gives the pids
/// it asked about no labels this time (they are asked for again next time).
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One batch of pids to read, and where to send their labels.
struct Request {
    pids: Vec<u32>,
    reply: mpsc::SyncSender<Vec<(u32, OwnerInfo)>>,
}

/// The thread that reads owner labels for the cache (see the module doc).
pub struct LabelReader {
    proc: ProcRoot,
    requests: mpsc::Receiver<Request>,
    /// Sends the empty request that wakes [`Self::run`] to see a cancel.
    wake: mpsc::Sender<Request>,
}

/// Wakes a [`LabelReader`] blocked waiting for requests (to see that it
/// was cancelled).
#[derive(Debug)]
pub struct LabelWaker(mpsc::Sender<Request>);

impl LabelWaker {
    pub fn wake(&self) {
        let (reply, _) = mpsc::sync_channel(1);
        let _ = self.0.send(Request {
            pids: Vec::new(),
            reply,
        });
    }
}

/// Asks the [`LabelReader`] for labels.
#[derive(Clone, Debug)]
pub struct LabelLookups(mpsc::Sender<Request>);

impl LabelReader {
    /// The reader and the handle that asks it.
    pub fn new(proc: ProcRoot) -> (Self, LabelLookups) {
        let (tx, rx) = mpsc::channel();
        let reader = Self {
            proc,
            requests: rx,
            wake: tx.clone(),
        };
        (reader, LabelLookups(tx))
    }

    /// What wakes [`Self::run`] once `cancel` fired (it sleeps until a
    /// request comes: no timer wakes it on a quiet host).
    pub fn waker(&self) -> LabelWaker {
        LabelWaker(self.wake.clone())
    }

    /// Answers requests until `cancel` (seen at the next request, or when
    /// the [`LabelWaker`] wakes it).
    pub fn run(self, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            match self.requests.recv() {
                Ok(request) => {
                    let infos = request
                        .pids
                        .iter()
                        .map(|pid| (*pid, OwnerInfo::read(&self.proc, *pid)))
                        .collect();
                    let _ = request.reply.send(infos);
                }
                Err(mpsc::RecvError) => return,
            }
        }
    }
}

impl LabelLookups {
    /// The labels of `pids`, read by the reader thread; `None` when it does
    /// not answer within [`READ_TIMEOUT`].
    fn read(&self, pids: Vec<u32>) -> Option<Vec<(u32, OwnerInfo)>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.0.send(Request { pids, reply }).ok()?;
        answer.recv_timeout(READ_TIMEOUT).ok()
    }
}

/// The labels of each pid, read once per process lifetime: keyed by (pid,
/// start time).
#[derive(Debug, Default)]
pub struct LabelCache {
    proc: ProcRoot,
    /// `None`: read `/proc` on the calling thread.
    reader: Option<LabelLookups>,
    entries: Mutex<HashMap<u32, (u64, Arc<OwnerInfo>)>>,
}

impl LabelCache {
    /// A cache that reads `/proc` on the thread that asks.
    pub fn new(proc: ProcRoot) -> Self {
        Self {
            proc,
            reader: None,
            entries: Mutex::default(),
        }
    }

    /// A cache that reads what it lacks through `reader`.
    pub fn reading_through(proc: ProcRoot, reader: LabelLookups) -> Self {
        Self {
            reader: Some(reader),
            ..Self::new(proc)
        }
    }

    /// The labels of each of `pids` (a pid that is gone has none).
    pub fn lookup(&self, pids: impl IntoIterator<Item = u32>) -> HashMap<u32, Arc<OwnerInfo>> {
        let mut out = HashMap::new();
        let mut missing: HashMap<u32, u64> = HashMap::new();
        for pid in pids {
            if out.contains_key(&pid) || missing.contains_key(&pid) {
                continue;
            }
            let start = self.proc.start_time(pid).unwrap_or(0);
            let cached = self
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&pid)
                .filter(|(s, _)| *s == start)
                .map(|(_, info)| Arc::clone(info));
            match cached {
                Some(info) => {
                    out.insert(pid, info);
                }
                None => {
                    missing.insert(pid, start);
                }
            }
        }
        if missing.is_empty() {
            return out;
        }
        let read: Vec<(u32, OwnerInfo)> = match &self.reader {
            None => missing
                .keys()
                .map(|pid| (*pid, OwnerInfo::read(&self.proc, *pid)))
                .collect(),
            Some(reader) => match reader.read(missing.keys().copied().collect()) {
                Some(read) => read,
                None => {
                    tracing::debug!(
                        pids = missing.len(),
                        "owner labels: the reader did not answer"
                    );
                    for pid in missing.into_keys() {
                        out.insert(pid, Arc::default());
                    }
                    return out;
                }
            },
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (pid, info) in read {
            let info = Arc::new(info);
            let start = missing.get(&pid).copied().unwrap_or(0);
            entries.insert(pid, (start, Arc::clone(&info)));
            out.insert(pid, info);
        }
        out
    }

    /// Forgets pids not in `live`.
    pub fn retain(&self, live: &HashSet<u32>) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|pid, _| live.contains(pid));
    }
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
    fn labels_come_from_the_proc_tree_and_follow_pid_reuse() {
        let mut proc = crate::owners::procfs::fixture::FakeProc::new();
        proc.process(40, 1, "svc")
            .cgroup(&format!("/system.slice/docker-{ID}.scope"))
            .exe("/usr/bin/svc");
        let cache = LabelCache::new(proc.root());
        let info = cache.lookup([40, 40, 41]);
        assert_eq!(info.len(), 2);
        assert_eq!(info[&40].get(OwnerLabel::Container), ID);
        assert_eq!(info[&40].get(OwnerLabel::Exe), "/usr/bin/svc");
        assert_eq!(*info[&41], OwnerInfo::default(), "gone: no labels");
        // The pid is reused by another process (another start time): the
        // new process's labels, not the cached ones.
        proc.exit(40);
        let stat = proc.dir().join("40/stat");
        proc.process(40, 1, "other")
            .cgroup("/system.slice/other.service");
        let text = std::fs::read_to_string(&stat)
            .unwrap()
            .replacen(" 40000 ", " 40001 ", 1);
        std::fs::write(&stat, text).unwrap();
        assert_eq!(
            cache.lookup([40])[&40].get(OwnerLabel::Unit),
            "other.service"
        );
        cache.retain(&HashSet::new());
        assert!(cache.entries.lock().unwrap().is_empty());
    }

    #[test]
    fn a_reader_thread_answers_for_the_cache() {
        let mut proc = crate::owners::procfs::fixture::FakeProc::new();
        proc.process(40, 1, "svc").exe("/usr/bin/svc");
        proc.process(41, 1, "other").exe("/usr/bin/other");
        let (reader, lookups) = LabelReader::new(proc.root());
        let waker = reader.waker();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let thread = std::thread::spawn(move || reader.run(&stop));
        let cache = LabelCache::reading_through(proc.root(), lookups);
        let info = cache.lookup([40, 41, 40]);
        assert_eq!(info[&40].get(OwnerLabel::Exe), "/usr/bin/svc");
        assert_eq!(info[&41].get(OwnerLabel::Exe), "/usr/bin/other");
        // It sleeps until asked: the waker lets it see the cancel.
        cancel.cancel();
        waker.wake();
        thread.join().unwrap();
        // Cached: answered without the (now stopped) reader.
        assert_eq!(cache.lookup([40])[&40].get(OwnerLabel::Exe), "/usr/bin/svc");
        // Not cached and no reader: no labels this time, not cached either.
        assert_eq!(*cache.lookup([42])[&42], OwnerInfo::default());
        assert!(!cache.entries.lock().unwrap().contains_key(&42));
    }
}
