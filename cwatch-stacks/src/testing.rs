/*!
Test support (feature `testing`): the test programs of `testdata/` built at
test time with gcc, g++, rustc and go, and a ptrace harness that captures a
sample the way the kernel will — stopped at the entry of `connect()`,
user registers from `PTRACE_GETREGS`, and the stack slice read from
`/proc/<tid>/mem` at rsp. Every program it starts is killed by pid.
*/
use std::{
    fs::File,
    io,
    os::unix::{fs::FileExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{Regs, Sample};

/// How a test program is built and what its stack must show.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    pub name: &'static str,
    pub source: &'static str,
    /// The function that calls connect (through its language's library).
    pub opener: &'static str,
    /// Its caller.
    pub caller: &'static str,
    pub kind: Kind,
    /// Strip the binary after building it.
    pub strip: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gcc(&'static [&'static str]),
    Gxx(&'static [&'static str]),
    Rustc,
    Go(&'static [&'static str]),
}

const C_NOFP: &[&str] = &["-O2", "-g", "-fomit-frame-pointer"];
const C_FP: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer"];
const C_FP_NOCFI: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
];
const C_NOFP_NOCFI: &[&str] = &[
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
];

const fn c(name: &'static str, flags: &'static [&'static str], strip: bool) -> Recipe {
    Recipe {
        name,
        source: "leak.c",
        opener: "open_leaky_connection",
        caller: "worker_handle",
        kind: Kind::Gcc(flags),
        strip,
    }
}

pub const C_O2: Recipe = c("c-O2-nofp", C_NOFP, false);
pub const C_O2_FP: Recipe = c("c-O2-fp", C_FP, false);
/// Frame pointers but no `.eh_frame` for the program's own code.
pub const C_FP_NO_CFI: Recipe = c("c-O2-fp-nocfi", C_FP_NOCFI, false);
/// Neither: nothing can unwind through the program's frames.
pub const C_NO_FP_NO_CFI: Recipe = c("c-O2-nofp-nocfi", C_NOFP_NOCFI, false);
pub const C_STRIPPED: Recipe = c("c-O2-stripped", C_NOFP, true);
pub const CPP: Recipe = Recipe {
    name: "cpp-O2",
    source: "data_api.cc",
    opener: "DataApi::connect_to",
    caller: "Worker::handle",
    kind: Kind::Gxx(&["-O2", "-g"]),
    strip: false,
};
pub const RUST: Recipe = Recipe {
    name: "rust-O2",
    source: "leak.rs",
    opener: "leak::open_leaky_connection",
    caller: "leak::worker_handle",
    kind: Kind::Rustc,
    strip: false,
};
pub const GO: Recipe = Recipe {
    name: "go",
    source: "leak.go",
    opener: "main.openLeakyConnection",
    caller: "main.workerHandle",
    kind: Kind::Go(&[]),
    strip: false,
};
/// `-ldflags=-s -w`: no symbols, no DWARF, no `.debug_frame`.
pub const GO_STRIPPED: Recipe = Recipe {
    name: "go-stripped",
    kind: Kind::Go(&["-ldflags=-s -w"]),
    ..GO
};

const fn backend_c(name: &'static str, strip: bool) -> Recipe {
    Recipe {
        name,
        source: "backend.c",
        opener: "open_backend_connection",
        caller: "handle_request",
        kind: Kind::Gcc(C_NOFP),
        strip,
    }
}

/// The provenance kernel tests' leaking C program (`-O2
/// -fomit-frame-pointer`): waits for a line on stdin, connects, holds.
pub const BACKEND_C: Recipe = backend_c("prov-c", false);
/// The same, stripped.
pub const BACKEND_C_STRIPPED: Recipe = backend_c("prov-cs", true);
/// Its Rust twin.
pub const BACKEND_RUST: Recipe = Recipe {
    name: "prov-rs",
    source: "backend.rs",
    opener: "backend::open_backend_connection",
    caller: "backend::handle_request",
    kind: Kind::Rustc,
    strip: false,
};

/// `opener (file:line) ← caller`: the site a whole stack of `recipe` must
/// read.
pub fn expected_site(recipe: &Recipe) -> io::Result<String> {
    let line = connect_line(recipe.source)?;
    Ok(format!(
        "{} ({}:{line}) ← {}",
        recipe.opener, recipe.source, recipe.caller
    ))
}

/// Every recipe, for the measurement.
pub const ALL: &[Recipe] = &[
    C_O2,
    C_O2_FP,
    C_FP_NO_CFI,
    C_NO_FP_NO_CFI,
    C_STRIPPED,
    CPP,
    RUST,
    GO,
    GO_STRIPPED,
];

/// `testdata/` of this crate.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The 1-based line of `source` that carries the `CONNECT` marker.
pub fn connect_line(source: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(testdata().join(source))?;
    text.lines()
        .position(|l| l.contains("CONNECT"))
        .map(|i| i as u32 + 1)
        .ok_or_else(|| io::Error::other(format!("{source} has no CONNECT line")))
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::other(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Builds `recipe` into `dir` and returns the binary (plus, for stripped
/// recipes, the unstripped twin it was stripped from, for ground truth).
pub fn build(recipe: &Recipe, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let src = testdata().join(recipe.source);
    let out = dir.join(recipe.name);
    match recipe.kind {
        Kind::Gcc(flags) => run(Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&src))?,
        Kind::Gxx(flags) => run(Command::new("g++")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&src))?,
        Kind::Rustc => run(Command::new(
            std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()),
        )
        .args(["--edition", "2021", "-C", "opt-level=2", "-g", "-o"])
        .arg(&out)
        .arg(&src))?,
        Kind::Go(flags) => run(Command::new("go")
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "-buildvcs=false")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0"))?,
    }
    if !recipe.strip {
        return Ok((out.clone(), out));
    }
    let stripped = dir.join(format!("{}.stripped", recipe.name));
    run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&out))?;
    Ok((stripped, out))
}

/// How long a test program may take to reach connect().
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(120);

/// A program stopped by ptrace at the entry of its `connect()`, and the
/// sample taken there. Dropping it kills the program (by pid).
#[derive(Debug)]
pub struct Capture {
    pub sample: Sample,
    /// The thread that called connect.
    pub tid: u32,
    /// The port connect() was asked to reach (from its sockaddr argument).
    pub port: u16,
    child: Child,
    /// Tells the watchdog to stand down (set before the child is reaped).
    done: Arc<AtomicBool>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        // Every traced thread must be reaped before the leader can be: wait
        // for the program's own process group only (never for -1, which
        // could take other tests' children).
        let group = -(self.child.id() as i32);
        while wait(group).is_ok() {}
        let _ = self.child.wait();
    }
}

fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every request made here passes either 0 or a pointer to a
    // live, properly sized buffer owned by the caller as `data`.
    let r = unsafe { libc::ptrace(req, tid, addr, data) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Runs `exe port` under ptrace, following every thread, until some thread
/// enters connect(); reads its registers and `stack_bytes` of its stack.
pub fn capture_connect(exe: &Path, port: u16, stack_bytes: usize) -> io::Result<Capture> {
    let mut cmd = Command::new(exe);
    cmd.arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: PTRACE_TRACEME is async-signal-safe and touches no memory of
    // the parent; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            // Its own process group, so that waiting names only its threads.
            if libc::setpgid(0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Bounded: a program that never reaches connect() is killed (by pid).
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = Arc::clone(&done);
    std::thread::spawn(move || {
        std::thread::sleep(CAPTURE_TIMEOUT);
        if !watchdog.load(Ordering::SeqCst) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped
            // (the capture loop only reaps it once it has died).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut capture = Capture {
        sample: Sample::default(),
        tid: 0,
        port: 0,
        child,
        done: Arc::clone(&done),
    };
    // The exec stop.
    wait(pid)?;
    let group = -pid;
    let opts = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL;
    ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts as usize)?;
    ptrace(libc::PTRACE_SYSCALL, pid, 0, 0)?;
    loop {
        let (tid, status) = wait(group)?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if tid == pid {
                return Err(io::Error::other("the program exited before connect()"));
            }
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let mut inject = 0;
        if sig == libc::SIGTRAP | 0x80 {
            let mut info = std::mem::MaybeUninit::<libc::ptrace_syscall_info>::zeroed();
            let size = std::mem::size_of::<libc::ptrace_syscall_info>();
            ptrace(
                libc::PTRACE_GET_SYSCALL_INFO,
                tid,
                size,
                info.as_mut_ptr() as usize,
            )?;
            // SAFETY: zero-initialised and filled by the kernel; every bit
            // pattern is a valid ptrace_syscall_info.
            let info = unsafe { info.assume_init() };
            // SAFETY: op says which member of the union the kernel filled.
            if info.op == libc::PTRACE_SYSCALL_INFO_ENTRY
                && unsafe { info.u.entry.nr } == libc::SYS_connect as u64
            {
                // SAFETY: as above, op is ENTRY.
                let sockaddr = unsafe { info.u.entry.args[1] };
                capture.tid = tid as u32;
                capture.sample = sample_of(pid as u32, tid)?;
                capture.port = read_port(tid, sockaddr)?;
                capture.sample.stack = read_stack(tid, capture.sample.regs.sp, stack_bytes)?;
                done.store(true, Ordering::SeqCst);
                return Ok(capture);
            }
        } else if sig != libc::SIGTRAP && sig != libc::SIGSTOP {
            // A signal for the program (Go preempts with SIGURG): deliver it.
            inject = sig as usize;
        }
        // A thread that exited between the stop and now is fine to lose.
        let _ = ptrace(libc::PTRACE_SYSCALL, tid, 0, inject);
    }
}

fn wait(pid: i32) -> io::Result<(i32, i32)> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let tid = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if tid != -1 {
            return Ok((tid, status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn sample_of(pid: u32, tid: i32) -> io::Result<Sample> {
    let mut regs = std::mem::MaybeUninit::<libc::user_regs_struct>::zeroed();
    ptrace(libc::PTRACE_GETREGS, tid, 0, regs.as_mut_ptr() as usize)?;
    // SAFETY: filled by the kernel; plain integers.
    let regs = unsafe { regs.assume_init() };
    Ok(Sample {
        pid,
        regs: Regs {
            ip: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
        },
        stack: Vec::new(),
    })
}

/// Up to `n` bytes at `sp`, stopping at the first unreadable page (the top
/// of the stack mapping), as a kernel copy bounded to the mapping would.
fn read_stack(tid: i32, sp: u64, n: usize) -> io::Result<Vec<u8>> {
    let mem = File::open(format!("/proc/{tid}/mem"))?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match mem.read_at(&mut buf[got..], sp + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn read_port(tid: i32, sockaddr: u64) -> io::Result<u16> {
    let mem = File::open(format!("/proc/{tid}/mem"))?;
    let mut sa = [0u8; 4];
    mem.read_exact_at(&mut sa, sockaddr)?;
    Ok(u16::from_be_bytes([sa[2], sa[3]]))
}
