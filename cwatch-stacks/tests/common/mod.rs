//! What the capture tests share: building a test program, capturing it at
//! connect() with ptrace against a listener of ours on 127.0.0.1, and the
//! ground truth from binutils (`addr2line`, `nm`, `readelf`), which reads
//! the unstripped binary independently of blazesym.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    ops::Range,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use cwatch_stacks::{Config, Frame, Stack, Stacks, Trace, short_name, testing};

pub const STACK_BYTES: usize = 16 << 10;

/// One captured, unwound and symbolized program.
pub struct Run {
    pub recipe: testing::Recipe,
    pub exe: PathBuf,
    /// The unstripped binary with the same code (ground truth).
    pub twin: PathBuf,
    pub trace: Trace,
    pub stack: Stack,
    pub stacks: Stacks,
    pub dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `tool` runs; when not, fails under CI and otherwise says why
/// the test is skipped (`cargo xtask setup` installs it).
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("version").output().is_ok();
    if !ok {
        assert!(
            !in_ci(),
            "CI=true: `{tool}` is missing; `cargo xtask setup` installs it"
        );
        eprintln!("skipped: `{tool}` is missing; `cargo xtask setup` installs it");
    }
    ok
}

fn workdir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cwatch-stacks-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Builds `recipe`, captures it at connect() (`stack_bytes` of stack),
/// unwinds it while it is stopped there, kills it, then symbolizes: the
/// way cwatch will, lazily, after the fact.
pub fn run_with(recipe: testing::Recipe, stack_bytes: usize, cfg: Config) -> Run {
    let dir = workdir(recipe.name);
    let (exe, mut twin) = testing::build(&recipe, &dir).expect("build the test program");
    if recipe.name == testing::GO_STRIPPED.name {
        twin = testing::build(&testing::GO, &dir)
            .expect("build the unstripped twin")
            .0;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("local addr").port();
    let capture = testing::capture_connect(&exe, port, stack_bytes).expect("capture at connect()");
    // Ground truth: the connect() we stopped in is the one to our listener.
    assert_eq!(capture.port, port, "stopped in someone else's connect()");
    assert!(!capture.sample.stack.is_empty());
    let mut stacks = Stacks::new(cfg);
    let trace = stacks.unwind(&capture.sample).expect("unwind");
    drop(capture);
    let stack = stacks.symbolize(&trace);
    eprintln!(
        "{}: partial {} end {:?}",
        recipe.name,
        stack.partial,
        trace.end()
    );
    for f in &stack.frames {
        eprintln!("  {f:?}");
    }
    Run {
        recipe,
        exe,
        twin,
        trace,
        stack,
        stacks,
        dir,
    }
}

pub fn run(recipe: testing::Recipe) -> Run {
    run_with(recipe, STACK_BYTES, Config::default())
}

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run binutils");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The function (outermost, not inlined) holding `svma`, per addr2line.
pub fn addr2line(bin: &Path, svma: u64) -> Option<String> {
    let out = tool(
        Command::new("addr2line")
            .args(["-f", "-C", "-i", "-e"])
            .arg(bin)
            .arg(format!("{svma:#x}")),
    );
    let names: Vec<&str> = out.lines().step_by(2).collect();
    names.last().filter(|n| **n != "??").map(|n| n.to_string())
}

/// `[value, value + size)` of symbol `name` (demangled), per `nm -S -C`.
pub fn nm_range(bin: &Path, name: &str) -> Range<u64> {
    let out = tool(Command::new("nm").args(["-S", "-C"]).arg(bin));
    for line in out.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(v), Some(s), Some(_), Some(n)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        if short_name(n) == name {
            let v = u64::from_str_radix(v, 16).expect("nm value");
            return v..v + u64::from_str_radix(s, 16).expect("nm size");
        }
    }
    panic!("{} has no symbol {name}", bin.display());
}

/// The GNU build-id, per `readelf -n`.
pub fn build_id(bin: &Path) -> Option<String> {
    let out = tool(Command::new("readelf").arg("-n").arg(bin));
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(str::to_owned)
}

fn last_segment(name: &str) -> &str {
    // Go's assembly functions: `runtime.goexit.abi0` in ELF, without the
    // ABI suffix in DWARF.
    let s = short_name(name);
    let s = s.strip_suffix(".abi0").unwrap_or(s);
    s.rsplit(['.', ':']).next().unwrap_or(s)
}

/// Pairs each unwound frame with its symbolized machine frame (inlined
/// frames left out), for frames in the program's own binary.
pub fn own_frames(run: &Run) -> Vec<(&cwatch_stacks::RawFrame, &Frame)> {
    let machine = run.stack.frames.iter().filter(|f| !f.inlined);
    run.trace
        .frames()
        .iter()
        .zip(machine)
        .filter(|(raw, _)| raw.module_path() == Some(run.exe.as_path()))
        .collect()
}

/// Every name the stack gives a frame of the program agrees with addr2line
/// on the unstripped binary: a wrong name fails here.
pub fn assert_names_true(run: &Run) {
    let own = own_frames(run);
    assert!(!own.is_empty(), "no frame in {}", run.exe.display());
    for (raw, frame) in own {
        let Some(sym) = &frame.symbol else { continue };
        let truth = addr2line(&run.twin, raw.svma).unwrap_or_else(|| {
            panic!(
                "addr2line knows no function at {:#x}, we said {sym}",
                raw.svma
            )
        });
        assert_eq!(
            last_segment(sym),
            last_segment(&truth),
            "frame at {:#x}: we say {sym}, addr2line says {truth}",
            raw.svma
        );
    }
}

/// `opener (file:line) ← caller`, as the site of a whole stack must read.
pub fn expected_site(recipe: &testing::Recipe) -> String {
    testing::expected_site(recipe).expect("CONNECT marker")
}
