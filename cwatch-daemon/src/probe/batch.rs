/*!
Reading a whole BPF hash map in a few syscalls. aya 0.14 walks a map with
two syscalls per entry (`BPF_MAP_GET_NEXT_KEY`, then a lookup); at a million
CLOSE_WAIT records that is two million syscalls for every reconciliation.
`BPF_MAP_LOOKUP_BATCH` (Linux 5.6) copies thousands of entries per call.
*/
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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
