//! The guest's initramfs: Debian's static busybox, the few modules a
//! distribution kernel needs to mount this machine's files over 9p (virtio
//! PCI, 9pnet_virtio, 9p, overlay, and what they depend on, in load order from the
//! package's `modules.dep`), and the first-stage init (`init.sh`). Written as
//! an uncompressed newc cpio archive (the `cpio` crate); rebuilt at every
//! boot, which takes milliseconds.
use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    io::{BufWriter, Cursor},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::kernel::Kernel;

/// The first stage: loads the modules, mounts the host's `/` read-only over
/// 9p and switches to it.
const INIT: &str = include_str!("init.sh");

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// Modules without which the guest cannot see the host's files.
const NEEDED: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// `modules.dep`: module path → the paths it needs, as depmod lists them
/// (the last is loaded first).
pub fn parse_modules_dep(text: &str) -> HashMap<&str, Vec<&str>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((module.trim(), deps.split_whitespace().collect()))
        })
        .collect()
}

/// A module's name from its path (`kernel/fs/9p/9p.ko.xz` → `9p`).
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map_or(file, |(name, _)| name)
}

/// The module files to load, in order, for `wanted` names: each one's
/// dependencies (reversed, as modprobe does), then itself, each once.
/// Names built into the kernel (`modules.builtin`) need nothing.
pub fn load_order(dep: &str, builtin: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let dep = parse_modules_dep(dep);
    let by_name: HashMap<&str, &str> = dep.keys().map(|p| (module_name(p), *p)).collect();
    let builtin: Vec<&str> = builtin.lines().map(module_name).collect();
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        let Some(path) = by_name.get(name) else {
            if builtin.contains(name) {
                continue;
            }
            bail!("the kernel has no module `{name}` and does not build it in");
        };
        for needed in dep[path].iter().rev().chain(std::iter::once(path)) {
            if !order.iter().any(|o| o == needed) {
                order.push((*needed).to_string());
            }
        }
    }
    Ok(order)
}

/// Writes `kernel`'s initramfs to `out`.
pub fn build(kernel: &Kernel, out: &Path) -> anyhow::Result<()> {
    let modules = kernel.modules_dir();
    let read = |name: &str| {
        let path = modules.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let order = load_order(
        &read("modules.dep")?,
        &read("modules.builtin").unwrap_or_default(),
        NEEDED,
    )
    .with_context(|| {
        format!(
            "kernel {}: it cannot mount the host's files over 9p",
            kernel.release
        )
    })?;
    let in_guest = |m: &str| format!("lib/modules/{}/{m}", kernel.release);
    let mut list = String::new();
    for m in &order {
        list += &format!("/{}\n", in_guest(m));
    }
    let mut entries: Vec<Entry> = vec![
        Entry::dir("bin"),
        Entry::dir("dev"),
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::dir("newroot"),
        Entry::file("init", 0o755, Source::Bytes(INIT.as_bytes().to_vec())),
        Entry::file("bin/busybox", 0o755, Source::Path(BUSYBOX.into())),
        Entry::file("modules", 0o644, Source::Bytes(list.into_bytes())),
    ];
    // Every directory above a module, parents first (a prefix sorts first).
    let dirs: BTreeSet<String> = order
        .iter()
        .flat_map(|m| {
            let path = in_guest(m);
            Path::new(&path)
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    entries.extend(dirs.iter().map(|d| Entry::dir(d)));
    for m in &order {
        entries.push(Entry::file(
            &in_guest(m),
            0o644,
            Source::Path(modules.join(m)),
        ));
    }
    write(&entries, out)
}

enum Source {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

struct Entry {
    name: String,
    mode: u32,
    data: Option<Source>,
}

impl Entry {
    fn dir(name: &str) -> Entry {
        Entry {
            name: name.to_string(),
            mode: 0o040_755,
            data: None,
        }
    }

    fn file(name: &str, perm: u32, data: Source) -> Entry {
        Entry {
            name: name.to_string(),
            mode: 0o100_000 | perm,
            data: Some(data),
        }
    }
}

fn write(entries: &[Entry], out: &Path) -> anyhow::Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::new(file);
    for (ino, entry) in entries.iter().enumerate() {
        let bytes = match &entry.data {
            None => Vec::new(),
            Some(Source::Bytes(b)) => b.clone(),
            Some(Source::Path(p)) => {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
            }
        };
        let size = u32::try_from(bytes.len()).context("an initramfs file over 4 GiB")?;
        let mut fp = cpio::NewcBuilder::new(&entry.name)
            .ino(ino as u32 + 1)
            .mode(entry.mode)
            .nlink(if entry.data.is_none() { 2 } else { 1 })
            .write(w, size);
        std::io::copy(&mut Cursor::new(bytes), &mut fp)?;
        w = fp.finish()?;
    }
    let w = cpio::newc::trailer(w)?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

    /// Linux 6.1 (Debian): virtio PCI and 9p are modules.
    const DEP_6_1: &str = "\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
";

    #[test]
    fn dependencies_load_first_each_once() {
        let order = load_order(DEP_6_1, "", WANTED).unwrap();
        let names: Vec<&str> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "fscache",
                "9p"
            ]
        );
    }

    /// Linux 6.12 (Debian): virtio PCI built in, modules compressed.
    #[test]
    fn built_in_modules_are_skipped_and_compressed_names_understood() {
        let dep = "\
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/fs/netfs/netfs.ko.xz:
";
        let builtin = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";
        let order = load_order(dep, builtin, WANTED).unwrap();
        assert_eq!(
            order,
            [
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/9p/9p.ko.xz"
            ]
        );
        let err = load_order(dep, "", WANTED).unwrap_err();
        assert!(err.to_string().contains("virtio_pci"), "{err}");
    }
}
