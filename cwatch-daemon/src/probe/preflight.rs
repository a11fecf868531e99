/*!
What the kernel must offer before anything is loaded, each checked without
leaving a trace: the BTF file (`/sys/kernel/btf/vmlinux`, or the hidden
`--kernel-btf` setting), every struct field the programs read in it, the
tracepoints they attach to (their `btf_trace_*` types), and whether the
`bpf()` system call lets this process create a map and load a program at
all (a throwaway array map and a two-instruction socket filter, closed at
once). `cwatch doctor` reports each; `cwatch run` refuses to start on any
failure, with one line naming what is missing and the kernel feature to
enable (exit 2), before it binds a port or creates a pin.
*/
use std::path::Path;

use btf_rs::{Btf, Type};

use super::offsets::{self, OffsetsError};

/// One thing the kernel lacks: what, and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; fix: {}", self.what, self.fix)
    }
}

/// The tracepoints the programs attach to (`tp_btf`), by their BTF type.
pub const TRACEPOINTS: &[(&str, &str)] = &[
    ("sock/inet_sock_set_state", "btf_trace_inet_sock_set_state"),
    ("tcp/tcp_destroy_sock", "btf_trace_tcp_destroy_sock"),
];

const BTF_FIX: &str = "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2021 are), or point --kernel-btf at this kernel's BTF";

/// The BTF file at `path`, parsed.
pub fn btf(path: &Path) -> Result<Btf, Problem> {
    offsets::read(path).map_err(|e| match e {
        OffsetsError::Read { reason, .. } => Problem {
            what: format!("no usable kernel BTF at {} ({reason})", path.display()),
            fix: BTF_FIX.into(),
        },
        other => Problem {
            what: other.to_string(),
            fix: BTF_FIX.into(),
        },
    })
}

/// Every field the programs read, resolved in `btf`.
pub fn fields(btf: &Btf, path: &Path) -> Result<cwatch_common::KernelOffsets, Problem> {
    offsets::resolve(btf).map_err(|e| Problem {
        what: format!("{e} (in {})", path.display()),
        fix: "cwatch reads these fields of struct sock, net, task_struct, socket and inode; \
              this kernel's layout is not one it knows: use Linux 5.12 or newer with \
              CONFIG_DEBUG_INFO_BTF=y and CONFIG_INET"
            .into(),
    })
}

/// The tracepoints' `btf_trace_*` typedefs in `btf`.
pub fn tracepoints(btf: &Btf, path: &Path) -> Result<(), Problem> {
    for (name, ty) in TRACEPOINTS {
        let found = btf
            .resolve_types_by_name(ty)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Typedef(_))));
        if !found {
            return Err(Problem {
                what: format!(
                    "tracepoint {name} is missing from the kernel BTF ({ty} not in {})",
                    path.display()
                ),
                fix: "use a kernel with CONFIG_TRACEPOINTS and CONFIG_INET (and BTF for its \
                      tracepoints: CONFIG_DEBUG_INFO_BTF=y)"
                    .into(),
            });
        }
    }
    Ok(())
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `bpf(cmd, attr)`: the new fd, closed at once, or the error.
fn bpf_probe(cmd: libc::c_long, attr: &[u64; 16]) -> std::io::Result<()> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of 128 bytes that
    // lives across the call; the kernel reads at most `size_of_val(attr)`
    // bytes and writes nothing back for these two commands.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd, and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Whether `bpf()` lets this process create a map and load a program.
pub fn bpf_allowed() -> Result<(), Problem> {
    let refused = |what: &str, e: std::io::Error| Problem {
        what: format!("the kernel refuses BPF: {what} failed ({e})"),
        fix: match e.raw_os_error() {
            Some(libc::ENOSYS) => "use a kernel with CONFIG_BPF_SYSCALL=y".into(),
            _ => "run as root or with CAP_BPF and CAP_PERFMON; check that no seccomp filter, \
                  LSM policy or kernel.unprivileged_bpf_disabled setting denies bpf() to cwatch"
                .into(),
        },
    };
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries (u32 each).
    let mut map = [0u64; 16];
    map[0] = u64::from(BPF_MAP_TYPE_ARRAY) | (4 << 32);
    map[1] = 4 | (1 << 32);
    bpf_probe(BPF_MAP_CREATE, &map).map_err(|e| refused("creating a map", e))?;
    // `r0 = 0; exit`.
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license.
    let mut prog = [0u64; 16];
    prog[0] = u64::from(BPF_PROG_TYPE_SOCKET_FILTER) | ((insns.len() as u64) << 32);
    prog[1] = insns.as_ptr() as u64;
    prog[2] = license.as_ptr() as u64;
    bpf_probe(BPF_PROG_LOAD, &prog).map_err(|e| refused("loading a program", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_btf_file_names_the_path_and_the_kernel_option() {
        let p = btf(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("missing");
        assert!(p.what.contains("/nonexistent/vmlinux"), "{p}");
        assert!(p.fix.contains("CONFIG_DEBUG_INFO_BTF"), "{p}");
        let garbage = std::env::temp_dir().join(format!("cwatch-btf-{}", std::process::id()));
        std::fs::write(&garbage, b"not btf at all, just bytes").unwrap();
        let p = btf(&garbage).err().expect("garbage");
        assert!(p.what.contains("no 0xeb9f magic"), "{p}");
        std::fs::remove_file(&garbage).unwrap();
    }
}
