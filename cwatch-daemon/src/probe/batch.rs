/*!
Reading and writing a BPF hash map in a few syscalls. aya 0.14 walks a map
with two syscalls per entry (`BPF_MAP_GET_NEXT_KEY`, then a lookup) and
writes one per call; at a million CLOSE_WAIT records that is two million
syscalls for every reconciliation, and a million for start-up's write-back.
`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH`
(Linux 5.6) move thousands of entries per call.
*/
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH`
/// from `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries asked for per call. The kernel returns a hash bucket whole, so
/// this must exceed the largest bucket (it grows on `ENOSPC`).
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`; the kernel zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls bpf(`cmd`) with `attr`.
fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `union bpf_attr` prefix of the size given;
    // the buffers it points to are the caller's and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `entries` (key, value) into the hash map `map`, `CHUNK` per call
/// (inserted or replaced). On an error (`E2BIG` when the map is full), the
/// entries before the failing one are written: returns how many, and the
/// error.
pub fn write_all<V: Pod>(
    map: &MapData,
    keys: &[u64],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    debug_assert_eq!(keys.len(), values.len());
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0;
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // The kernel only reads the keys and values.
        let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        done += attr.count as usize;
        if let Err(e) = result {
            return Err((done, e));
        }
    }
    Ok(())
}

/// Deletes `keys` from the hash map `map`, `CHUNK` per call. A key already
/// gone (the kernel raced us) ends a call early with `ENOENT` and the count
/// before it: the next call starts after that key, so the race loses
/// nothing. Returns how many were deleted.
pub fn delete_all(map: &MapData, keys: &[u64]) -> io::Result<usize> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: n as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let got = (attr.count as usize).min(n);
        deleted += got;
        match result {
            Ok(()) => rest = &rest[n..],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(got + 1..).unwrap_or_default();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Every entry of the hash map `map` (u64 keys, `V` values).
pub fn read_all<V: Pod>(map: &MapData) -> io::Result<HashMap<u64, V>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = HashMap::new();
    let mut chunk = CHUNK;
    let mut keys: Vec<u64> = vec![0; chunk];
    let mut values: Vec<V> = Vec::with_capacity(chunk);
    // The kernel's cursor: a bucket index (u32) for hash maps; room to spare.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        values.clear();
        values.reserve(chunk);
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const cursor_in) as u64
            },
            out_batch: (&raw mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the buffers hold `chunk` keys and values and outlive the
        // call; the kernel writes at most `count` of each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let got = attr.count as usize;
        match &err {
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                keys.resize(chunk, 0);
                continue;
            }
            Some(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("BPF_MAP_LOOKUP_BATCH: {e}"),
                ));
            }
            _ => {}
        }
        // SAFETY: the kernel filled the first `got` values (V is Pod).
        unsafe { values.set_len(got.min(chunk)) };
        out.extend(keys.iter().copied().zip(values.drain(..)));
        if err.is_some() {
            return Ok(out); // ENOENT: that was the last bucket
        }
        cursor_in = cursor_out;
        first = false;
    }
}
