/*!
The address space of a process: `/proc/<pid>/maps` read through an injectable
proc root (fetch in [`ProcFs`], parse in [`parse_maps`], which the unit tests
feed fixtures), and the paths through which a mapped file is opened
(`/proc/<pid>/map_files/<start>-<end>`, else `/proc/<pid>/root/<path>` so
files inside containers resolve in the process's own mount namespace).
*/
use std::path::{Path, PathBuf};

use crate::Error;

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// Offset in the mapped file of `start`.
    pub offset: u64,
    /// Device (major, minor) of the mapped file, as the kernel prints it.
    pub dev: (u32, u32),
    pub inode: u64,
    pub path: MapPath,
}

/// What a mapping maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapPath {
    /// A file, by the path the process opened it with (in its mount namespace).
    File(PathBuf),
    /// A file unlinked since it was mapped (`… (deleted)`); only
    /// `map_files/` still reaches it.
    Deleted(PathBuf),
    /// `[stack]`, `[vdso]`, `[heap]`, `[anon:…]` …
    Special(String),
    /// Anonymous memory (JIT code lands here).
    Anonymous,
}

impl Mapping {
    /// Whether this maps a regular file (deleted or not) with an inode.
    pub fn file_path(&self) -> Option<&Path> {
        match &self.path {
            MapPath::File(p) | MapPath::Deleted(p) if self.inode != 0 => Some(p),
            _ => None,
        }
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Where `/proc` is (injectable for tests and for a host `/proc` mounted
/// elsewhere, as in a container).
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses `/proc/<pid>/maps`.
    pub fn maps(&self, pid: u32) -> Result<Vec<Mapping>, Error> {
        let path = self.root.join(pid.to_string()).join("maps");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        parse_maps(&text).map_err(|(line, what)| Error::Maps { path, line, what })
    }

    /// `/proc/<pid>/map_files/<start>-<end>`: the very file of a mapping
    /// (opening it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
    pub fn map_file(&self, pid: u32, m: &Mapping) -> PathBuf {
        self.root
            .join(pid.to_string())
            .join("map_files")
            .join(format!("{:x}-{:x}", m.start, m.end))
    }

    /// `/proc/<pid>/root/<path>`: the path in the process's mount namespace.
    pub fn in_root(&self, pid: u32, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        self.root.join(pid.to_string()).join("root").join(relative)
    }
}

/// Parses the text of `/proc/<pid>/maps`. An error is `(line number, what)`.
pub fn parse_maps(text: &str) -> Result<Vec<Mapping>, (usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l).map_err(|what| (i + 1, what)))
        .collect()
}

fn parse_line(line: &str) -> Result<Mapping, String> {
    let mut rest = line;
    let mut field = |name: &str| -> Result<&str, String> {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        if f.is_empty() {
            return Err(format!("missing {name}"));
        }
        Ok(f)
    };
    let range = field("address range")?;
    let perms = field("permissions")?;
    let offset = field("offset")?;
    let dev = field("device")?;
    let inode = field("inode")?;
    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| format!("bad address range {range:?}"))?;
    let hex =
        |s: &str, what: &str| u64::from_str_radix(s, 16).map_err(|_| format!("bad {what} {s:?}"));
    let (start, end) = (hex(start, "start")?, hex(end, "end")?);
    if end < start {
        return Err(format!("address range {range:?} ends before it starts"));
    }
    let p = perms.as_bytes();
    if p.len() != 4 {
        return Err(format!("bad permissions {perms:?}"));
    }
    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| format!("bad device {dev:?}"))?;
    let dev_part = |s: &str| u32::from_str_radix(s, 16).map_err(|_| format!("bad device {dev:?}"));
    let name = rest.trim_start();
    let path = if name.is_empty() {
        MapPath::Anonymous
    } else if name.starts_with('[') {
        MapPath::Special(name.to_owned())
    } else if let Some(p) = name.strip_suffix(" (deleted)") {
        MapPath::Deleted(PathBuf::from(p))
    } else {
        MapPath::File(PathBuf::from(name))
    };
    Ok(Mapping {
        start,
        end,
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
        offset: hex(offset, "offset")?,
        dev: (dev_part(major)?, dev_part(minor)?),
        inode: inode.parse().map_err(|_| format!("bad inode {inode:?}"))?,
        path,
    })
}

/// Splits a `st_dev` as glibc encodes it into (major, minor).
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
55d0c5a4b000-55d0c5a4c000 r--p 00000000 fd:01 1835037                    /tmp/leak c
55d0c5a4c000-55d0c5a4d000 r-xp 00001000 fd:01 1835037                    /tmp/leak c
7f3a1c600000-7f3a1c628000 r--p 00000000 fd:01 1443216                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a1c628000-7f3a1c79d000 r-xp 00028000 fd:01 1443216                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a1c800000-7f3a1c801000 rw-p 00000000 00:00 0 
7f3a1c900000-7f3a1c901000 r-xp 00000000 00:1f 42                         /memfd:jit (deleted)
7ffd5e6f1000-7ffd5e712000 rw-p 00000000 00:00 0                          [stack]
7ffd5e7c8000-7ffd5e7ca000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_files_specials_anonymous_and_deleted() {
        let maps = parse_maps(FIXTURE).unwrap();
        assert_eq!(maps.len(), 8);
        let text = &maps[1];
        assert_eq!(
            (text.start, text.end, text.offset),
            (0x55d0c5a4c000, 0x55d0c5a4d000, 0x1000)
        );
        assert!(text.read && text.exec && !text.write);
        assert_eq!(text.dev, (0xfd, 1));
        assert_eq!(text.inode, 1835037);
        // A path with a space keeps it.
        assert_eq!(text.path, MapPath::File("/tmp/leak c".into()));
        assert_eq!(maps[4].path, MapPath::Anonymous);
        assert_eq!(maps[4].file_path(), None);
        assert_eq!(maps[5].path, MapPath::Deleted("/memfd:jit".into()));
        assert_eq!(maps[5].file_path(), Some(Path::new("/memfd:jit")));
        assert_eq!(maps[6].path, MapPath::Special("[stack]".into()));
        assert_eq!(maps[7].file_path(), None);
    }

    #[test]
    fn bad_lines_name_their_line() {
        let bad = "55d0c5a4b000-55d0c5a4c000 r--p 00000000 fd:01 1 /x\nzz-10 r--p 0 fd:01 1 /y\n";
        assert_eq!(parse_maps(bad).unwrap_err().0, 2);
        assert!(
            parse_maps("10-20 r--p 0 fd01 1 /y")
                .unwrap_err()
                .1
                .contains("device")
        );
        assert!(
            parse_maps("20-10 r--p 0 fd:01 1 /y")
                .unwrap_err()
                .1
                .contains("ends before")
        );
        assert!(parse_maps("10-20 r--p").unwrap_err().1.contains("missing"));
    }

    #[test]
    fn paths_through_the_proc_root() {
        let proc = ProcFs::new("/fixture/proc");
        let m = &parse_maps(FIXTURE).unwrap()[3];
        assert_eq!(
            proc.map_file(7, m),
            Path::new("/fixture/proc/7/map_files/7f3a1c628000-7f3a1c79d000")
        );
        assert_eq!(
            proc.in_root(7, Path::new("/usr/lib/libc.so.6")),
            Path::new("/fixture/proc/7/root/usr/lib/libc.so.6")
        );
    }

    #[test]
    fn reads_maps_from_an_injected_root() {
        let dir = std::env::temp_dir().join(format!("cwatch-stacks-maps-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("42")).unwrap();
        std::fs::write(dir.join("42/maps"), FIXTURE).unwrap();
        let maps = ProcFs::new(&dir).maps(42).unwrap();
        assert_eq!(maps.len(), 8);
        assert!(matches!(ProcFs::new(&dir).maps(43), Err(Error::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn splits_glibc_dev_numbers() {
        // makedev(0xfd, 1) and makedev(259, 0x12345).
        assert_eq!(split_dev(0xfd01), (0xfd, 1));
        let dev = ((259u64 & 0xfff) << 8) | ((0x12345u64 & 0xff) | ((0x12345u64 & !0xff) << 12));
        assert_eq!(split_dev(dev), (259, 0x12345));
    }
}
