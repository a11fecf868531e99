/*!
Pinned maps: the records that must outlive the daemon (`NURSERY`, `YOUNG`,
`CLOSE_WAIT`, `LINGER`, the `OWNERS` socket storage, `LISTENERS`) are pinned under the pin directory
(default `/sys/fs/bpf/cwatch`), so a restart, even after SIGKILL, finds every
socket's true CLOSE_WAIT start instead of estimating it.

Pins left by another build may not match this one. Before loading, every pin
is checked against the layout this daemon was built with (map type, key and
value size, capacity, flags, and the `LAYOUT` version); a pin that does not
match is logged and removed, and the loader creates it afresh — unless the
`LAYOUT` map says a newer cwatch wrote them: those are never rebuilt over
(the daemon then runs without pins, see [`super::pindir`]).

The directory is owner-only (0700), and so are the pins (the kernel creates
them 0600): no other user can read a record, or forge one.
*/
use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapInfo, MapType};
use cwatch_common::{
    BPF_F_MMAPABLE, Event, LAYOUT_VERSION, Listener, ListenerKey, Owner, SockRecord, names,
    young_split,
};
use tracing::{info, warn};

const BPF_F_NO_PREALLOC: u32 = 1;

/// What a pinned map must look like to be reused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The maps cwatch pins, as the eBPF object defines them (`young`:
/// `--young-sockets`, shared between `NURSERY` and `YOUNG`).
pub fn specs(young: u32) -> [Spec; 7] {
    let (slots, overflow) = young_split(young);
    [
        Spec {
            name: names::MAP_NURSERY,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<SockRecord>() as u32,
            max_entries: slots,
            flags: BPF_F_MMAPABLE,
        },
        Spec {
            name: names::MAP_YOUNG,
            map_type: MapType::Hash,
            key_size: 8,
            value_size: size_of::<SockRecord>() as u32,
            max_entries: overflow,
            flags: 0,
        },
        Spec {
            name: names::MAP_CLOSE_WAIT,
            map_type: MapType::Hash,
            key_size: 8,
            value_size: size_of::<SockRecord>() as u32,
            max_entries: 1 << 20,
            flags: BPF_F_NO_PREALLOC,
        },
        Spec {
            name: names::MAP_LINGER,
            map_type: MapType::Hash,
            key_size: 8,
            value_size: size_of::<Event>() as u32,
            max_entries: 1 << 20,
            flags: BPF_F_NO_PREALLOC,
        },
        Spec {
            name: names::MAP_OWNERS,
            map_type: MapType::SkStorage,
            key_size: 4,
            value_size: size_of::<Owner>() as u32,
            max_entries: 0,
            flags: BPF_F_NO_PREALLOC,
        },
        Spec {
            name: names::MAP_LISTENERS,
            map_type: MapType::Hash,
            key_size: size_of::<ListenerKey>() as u32,
            value_size: size_of::<Listener>() as u32,
            max_entries: 1 << 16,
            flags: BPF_F_NO_PREALLOC,
        },
        Spec {
            name: names::MAP_LAYOUT,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            flags: 0,
        },
    ]
}

/// Why a pin was not reused.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    Shape { found: String, expected: String },
    Layout { found: u32 },
    Unreadable(String),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Shape { found, expected } => write!(f, "is {found}, expected {expected}"),
            Mismatch::Layout { found } => {
                write!(f, "holds layout version {found}, expected {LAYOUT_VERSION}")
            }
            Mismatch::Unreadable(why) => write!(f, "cannot be opened: {why}"),
        }
    }
}

fn shape(map_type: Option<MapType>, key: u32, value: u32, max: u32, flags: u32) -> String {
    let ty = map_type.map_or_else(|| "unknown type".to_string(), |t| format!("{t:?}"));
    format!("{ty} key {key} value {value} max_entries {max} flags {flags:#x}")
}

/// Checks the pin at `path` against `spec`.
pub fn check(path: &Path, spec: &Spec) -> Result<(), Mismatch> {
    let info = MapInfo::from_pin(path).map_err(|e| Mismatch::Unreadable(e.to_string()))?;
    let found_type = info.map_type().ok();
    let found = (
        found_type,
        info.key_size(),
        info.value_size(),
        info.max_entries(),
        info.map_flags(),
    );
    let expected = (
        Some(spec.map_type),
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        spec.flags,
    );
    if found != expected {
        return Err(Mismatch::Shape {
            found: shape(found.0, found.1, found.2, found.3, found.4),
            expected: shape(expected.0, expected.1, expected.2, expected.3, expected.4),
        });
    }
    Ok(())
}

/// The `LAYOUT` version stored in the pinned map at `path` (0 = never set).
fn layout_version(path: &Path) -> Result<u32, Mismatch> {
    let data = MapData::from_pin(path).map_err(|e| Mismatch::Unreadable(e.to_string()))?;
    let array: Array<MapData, u32> =
        Array::try_from(Map::Array(data)).map_err(|e| Mismatch::Unreadable(e.to_string()))?;
    array
        .get(&0, 0)
        .map_err(|e| Mismatch::Unreadable(e.to_string()))
}

/// The names of the pinned maps (the same whatever the `YOUNG` size).
pub fn names() -> impl Iterator<Item = &'static str> {
    specs(0).into_iter().map(|s| s.name)
}

/// The `LAYOUT` version pinned in `dir`, when there is a readable `LAYOUT`
/// pin of the right shape.
pub fn pinned_layout(dir: &Path) -> Option<u32> {
    let path = dir.join(names::MAP_LAYOUT);
    // The LAYOUT map's shape does not depend on the YOUNG map's size.
    let spec = specs(0).into_iter().find(|s| s.name == names::MAP_LAYOUT)?;
    path.exists()
        .then(|| {
            check(&path, &spec)
                .and_then(|()| layout_version(&path))
                .ok()
        })
        .flatten()
}

/// The pin directory's mode.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` owner-only, or makes it so.
pub fn owner_only(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        info!(dir = %dir.display(), "pin directory was mode {mode:o}: made it {DIR_MODE:o}");
    }
    Ok(())
}

/// Makes `dir` hold only pins this build can reuse: creates it (mode
/// 0700), removes every mismatching pin (logged), and, when the layout
/// version is older, all of them. Pins of a newer layout are an error:
/// never rebuilt over. Returns the pin path of each map for the loader.
pub fn prepare(dir: &Path, young: u32) -> io::Result<Vec<(&'static str, PathBuf)>> {
    owner_only(dir)?;
    let specs = specs(young);
    let layout_path = dir.join(names::MAP_LAYOUT);
    let layout_spec = specs
        .iter()
        .find(|s| s.name == names::MAP_LAYOUT)
        .copied()
        .ok_or_else(|| io::Error::other("no LAYOUT map in the pin specs"))?;
    let mut rebuild_all = false;
    if layout_path.exists() {
        match check(&layout_path, &layout_spec).and_then(|()| layout_version(&layout_path)) {
            Ok(LAYOUT_VERSION) => {}
            Ok(found) if found > LAYOUT_VERSION => {
                return Err(io::Error::other(format!(
                    "{}: written by a newer cwatch, not rebuilt over",
                    Mismatch::Layout { found }
                )));
            }
            Ok(found) => {
                warn!(dir = %dir.display(), "{}: rebuilding all pinned maps", Mismatch::Layout { found });
                rebuild_all = true;
            }
            Err(why) => {
                warn!(pin = %layout_path.display(), "pinned layout map {why}: rebuilding all pinned maps");
                rebuild_all = true;
            }
        }
    }
    let mut paths = Vec::new();
    for spec in &specs {
        let path = dir.join(spec.name);
        if path.exists() {
            let verdict = if rebuild_all {
                Err(Mismatch::Layout { found: 0 })
            } else {
                check(&path, spec)
            };
            match verdict {
                Ok(()) => info!(pin = %path.display(), "reusing pinned map"),
                Err(why) => {
                    if !rebuild_all {
                        warn!(pin = %path.display(), "pinned map {why}: removing it and starting afresh");
                    }
                    std::fs::remove_file(&path)?;
                }
            }
        }
        paths.push((spec.name, path));
    }
    Ok(paths)
}

/// Records this build's layout version in the (now loaded) `LAYOUT` map.
pub fn stamp(layout: &mut Array<MapData, u32>) -> Result<(), aya::maps::MapError> {
    layout.set(0, LAYOUT_VERSION, 0)
}
