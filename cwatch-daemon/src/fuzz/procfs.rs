//! What `/proc` hands over: any process controls its own `comm` (and so
//! the name inside its `stat` line), its cgroup path (a unit or container
//! name) and its exe path. Read through a fixture proc root so the real
//! read path runs, not just the parsers.
use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, path::Path};

use proptest::prelude::*;

use super::hostile_text;
use crate::owners::{
    labels::{cgroup_path, container_of, unit_of},
    procfs::{comm_of, fixture::FakeProc, port_range, socket_inode},
};

/// A `stat` line whose name is hostile (the kernel writes it between
/// parentheses, unescaped: `)` and newlines included).
fn stat_line() -> impl Strategy<Value = Vec<u8>> {
    let name = proptest::collection::vec(any::<u8>(), 0..20);
    let fields = proptest::collection::vec(
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            Just("S".to_string()),
            hostile_text()
        ],
        0..52,
    );
    prop_oneof![
        (name, fields).prop_map(|(name, fields)| {
            let mut line = b"42 (".to_vec();
            line.extend_from_slice(&name);
            line.extend_from_slice(b") ");
            line.extend_from_slice(fields.join(" ").as_bytes());
            line.push(b'\n');
            line
        }),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

proptest! {
    #[test]
    fn proc_files_never_panic_and_names_keep_their_bytes(
        comm in proptest::collection::vec(any::<u8>(), 0..24),
        stat in stat_line(),
        cgroup in prop_oneof![
            hostile_text(),
            hostile_text().prop_map(|p| format!("0::{p}\n")),
            hostile_text().prop_map(|p| format!("1:name=systemd:/{p}.service\n0::/\n")),
        ],
        link in proptest::collection::vec(any::<u8>(), 0..40),
        range in hostile_text(),
    ) {
        // comm: at most 15 bytes, kept as they are (a trailing newline is
        // the file's, not the name's).
        let name = comm_of(&comm);
        let expected: Vec<u8> = {
            let raw = comm.strip_suffix(b"\n").unwrap_or(&comm);
            let cut = &raw[..raw.len().min(15)];
            cut.iter().copied().take_while(|&b| b != 0).collect()
        };
        prop_assert_eq!(name.bytes(), &expected[..]);
        let _ = socket_inode(Path::new(OsStr::from_bytes(&link)));
        if let Some((lo, hi)) = port_range(&range) {
            prop_assert!(lo <= hi);
        }
        if let Some(path) = cgroup_path(&cgroup) {
            let _ = unit_of(path);
            if let Some(id) = container_of(path) {
                prop_assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
        // The same bytes through a proc root.
        let mut proc = FakeProc::new();
        proc.process(42, 1, "x");
        let dir = proc.dir().join("42");
        std::fs::write(dir.join("comm"), &comm).unwrap();
        std::fs::write(dir.join("stat"), &stat).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup.as_bytes()).unwrap();
        let _ = std::fs::remove_file(dir.join("exe"));
        if !link.is_empty() && !link.contains(&0) {
            std::os::unix::fs::symlink(OsStr::from_bytes(&link), dir.join("exe")).unwrap();
        }
        let root = proc.root();
        prop_assert_eq!(root.comm(42).map(|c| c.bytes().to_vec()), Some(expected));
        let _ = (root.parent(42), root.start_time(42));
        let info = crate::owners::labels::OwnerInfo::read(&root, 42);
        if let Some(exe) = info.exe {
            prop_assert!(!exe.is_empty());
        }
    }
}
