//! `cwatch-deny [--bpf-cmd N]… -- PROGRAM ARGS…`: runs PROGRAM with a
//! seccomp filter that makes `bpf()` fail with EPERM — every call, or only
//! the commands given (e.g. 17 and 28: raw tracepoint open and link create,
//! so maps and programs load but nothing attaches). The kernel tests use it
//! to play a kernel (or a security policy) that refuses BPF, while the
//! process keeps every capability.
use std::{os::unix::process::CommandExt as _, process::ExitCode};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

const LD_ABS_W: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
/// `struct seccomp_data`: nr at 0, arch at 4, args[0] (low half) at 16.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: other architectures and other syscalls pass; `bpf()` with
/// one of `cmds` (any command when empty) gets EPERM.
fn filter(cmds: &[u32]) -> Vec<libc::sock_filter> {
    let n = cmds.len() as u8;
    let mut f = vec![
        insn(LD_ABS_W, 0, 0, ARCH),
        // Not this architecture: allow (skip to the final allow).
        insn(JEQ_K, 0, 3 + n, AUDIT_ARCH),
        insn(LD_ABS_W, 0, 0, NR),
        insn(JEQ_K, 0, 1 + n, libc::SYS_bpf as u32),
    ];
    if n > 0 {
        f.push(insn(LD_ABS_W, 0, 0, ARG0));
        for (i, cmd) in cmds.iter().enumerate() {
            // Match: jump over the remaining tests and the allow, to deny.
            f.push(insn(JEQ_K, n - i as u8, 0, *cmd));
        }
    } else {
        f.push(insn(RET_K, 0, 0, RET_EPERM));
    }
    f.push(insn(RET_K, 0, 0, RET_ALLOW));
    f.push(insn(RET_K, 0, 0, RET_EPERM));
    f
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(split) = args.iter().position(|a| a == "--") else {
        eprintln!("usage: cwatch-deny [--bpf-cmd N]... -- PROGRAM ARGS...");
        return ExitCode::from(2);
    };
    let mut cmds = Vec::new();
    let mut flags = args[..split].iter();
    while let Some(flag) = flags.next() {
        match (flag.as_str(), flags.next().map(|v| v.parse::<u32>())) {
            ("--bpf-cmd", Some(Ok(cmd))) => cmds.push(cmd),
            _ => {
                eprintln!("cwatch-deny: expected --bpf-cmd N, got {flag:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some((program, rest)) = args[split + 1..].split_first() else {
        eprintln!("cwatch-deny: no program after --");
        return ExitCode::from(2);
    };
    let f = filter(&cmds);
    let prog = libc::sock_fprog {
        len: f.len() as u16,
        filter: f.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls; `prog` points at `f`, alive across them.
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const prog,
                0,
                0,
            ) == 0
    };
    if !installed {
        eprintln!(
            "cwatch-deny: installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    let err = std::process::Command::new(program).args(rest).exec();
    eprintln!("cwatch-deny: exec {program}: {err}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel does, on (arch, nr, cmd).
    fn verdict(f: &[libc::sock_filter], data: [u32; 3]) -> u32 {
        let mut acc = 0;
        let mut pc = 0;
        loop {
            let i = f[pc];
            match i.code {
                LD_ABS_W => {
                    acc = match i.k {
                        ARCH => data[0],
                        NR => data[1],
                        _ => data[2],
                    }
                }
                JEQ_K => {
                    pc += usize::from(if acc == i.k { i.jt } else { i.jf });
                }
                _ => return i.k,
            }
            pc += 1;
        }
    }

    #[test]
    fn the_filter_denies_exactly_what_it_names() {
        let bpf = libc::SYS_bpf as u32;
        let all = filter(&[]);
        assert_eq!(verdict(&all, [AUDIT_ARCH, bpf, 0]), RET_EPERM);
        assert_eq!(verdict(&all, [AUDIT_ARCH, 1, 0]), RET_ALLOW);
        assert_eq!(verdict(&all, [0, bpf, 0]), RET_ALLOW);
        let attach = filter(&[17, 28]);
        for (cmd, want) in [
            (0, RET_ALLOW),
            (5, RET_ALLOW),
            (17, RET_EPERM),
            (28, RET_EPERM),
        ] {
            assert_eq!(verdict(&attach, [AUDIT_ARCH, bpf, cmd]), want, "cmd {cmd}");
        }
        assert_eq!(verdict(&attach, [AUDIT_ARCH, 1, 17]), RET_ALLOW);
        assert_eq!(verdict(&attach, [0, bpf, 17]), RET_ALLOW);
    }
}
