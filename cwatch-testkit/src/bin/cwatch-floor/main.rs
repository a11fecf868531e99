//! `cwatch-floor`: empty BPF programs on the two tracepoints cwatch uses,
//! attached the way cwatch's are run: through the kernel's raw tracepoint
//! path (`bpf_trace_run`), which `tp_btf` programs share; only the verifier's
//! typing of the context differs, not the call. bpftrace 0.17 (Debian's)
//! attaches only `tracepoint` programs, whose call goes through perf's
//! buffer first, so its empty programs are not cwatch's floor; these are.
//! The bench runs the churn beside them.
//!
//! Each program is `r0 = 0; exit`, named after its tracepoint (the kernel
//! keeps 15 characters, as it does of cwatch's). Prints `attached` once both
//! are attached, then holds them until killed (the bench kills it by pid).
use std::{ffi::CString, io::Write as _};

use anyhow::{Context as _, bail};

/// The bpf(2) commands and the program type used here (uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// The tracepoints cwatch attaches to.
const TRACEPOINTS: [&str; 2] = ["inet_sock_set_state", "tcp_destroy_sock"];

/// `union bpf_attr` as far as `BPF_PROG_LOAD` reads it here; the kernel
/// takes the size it is given and requires the rest to be zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`.
#[repr(C)]
#[derive(Default)]
struct RawTracepointOpen {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// `r0 = 0` (BPF_ALU64 | BPF_MOV | BPF_K), `exit` (BPF_JMP | BPF_EXIT).
const EMPTY: [u64; 2] = [0xb7, 0x95];

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of
    // `union bpf_attr` for `cmd`, and its exact size is passed; the
    // kernel reads (and for some commands writes) only that many bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(fd).map_err(|_| std::io::Error::other("bpf(2) returned no fd"))
}

/// Loads one empty program named `name` and attaches it to `name`; returns
/// the link's fd (holding it keeps the program attached).
fn attach(name: &str) -> anyhow::Result<i32> {
    let license = CString::new("GPL")?;
    let mut prog_name = [0u8; 16];
    for (to, from) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *to = from;
    }
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
        insn_cnt: EMPTY.len() as u32,
        insns: EMPTY.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..ProgLoad::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load).with_context(|| format!("loading {name}"))?;
    let tracepoint = CString::new(name)?;
    let mut open = RawTracepointOpen {
        name: tracepoint.as_ptr() as u64,
        prog_fd: prog as u32,
        ..RawTracepointOpen::default()
    };
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut open).with_context(|| format!("attaching to {name}"))
}

fn main() -> anyhow::Result<()> {
    if std::env::args().len() > 1 {
        bail!("usage: cwatch-floor (no arguments; as root)");
    }
    let links: Vec<i32> = TRACEPOINTS
        .iter()
        .map(|tp| attach(tp))
        .collect::<anyhow::Result<_>>()?;
    println!("attached {}", links.len());
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
