//! Booting one VM with qemu and following its console: 2 vCPUs, 4 GiB, no
//! network device, this machine's `/` shared read-only over 9p. KVM is tried
//! first where `/dev/kvm` opens; a KVM that cannot run the guest (here it
//! stops with "KVM internal error" right after the kernel is decompressed) is
//! noticed within seconds, said in one line, and the same boot runs under
//! TCG emulation instead, as does every later boot of this run.
//!
//! The console is written to a log file (each line with the seconds since
//! qemu started); boot messages are shown only when
//! the boot fails, the tests' output as it comes. The guest's init speaks in
//! lines starting with `cwatch-vm:` (`init`, `tests start`, `exit N`,
//! `failed: why`), parsed by [`Marker::parse`].
use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub const QEMU: &str = "qemu-system-x86_64";
pub const CPUS: u32 = 2;
pub const MEMORY: &str = "4G";
/// Time a KVM guest gets to reach its init before KVM counts as broken.
const KVM_PROBE: Duration = Duration::from_secs(20);
/// Time any guest gets to reach the tests.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// Set once KVM failed to run a guest in this run.
static KVM_BROKEN: AtomicBool = AtomicBool::new(false);

/// What to boot.
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Kernel command line, after the console settings.
    pub cmdline: String,
    pub log: PathBuf,
    /// Longest the tests may take once started.
    pub suite_limit: Duration,
}

/// How a VM run went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub accel: Accel,
    /// qemu start to the tests' start.
    pub boot: Duration,
    /// The tests' start to their exit.
    pub suite: Duration,
    /// The test binary's exit code.
    pub exit: i32,
}

/// A line of the guest's init.
#[derive(Debug, PartialEq, Eq)]
pub enum Marker {
    Init,
    TestsStart,
    Exit(i32),
    Failed(String),
}

impl Marker {
    pub fn parse(line: &str) -> Option<Marker> {
        let rest = line.trim_end().strip_prefix("cwatch-vm: ")?;
        if rest == "init" {
            Some(Marker::Init)
        } else if rest.starts_with("tests start") {
            Some(Marker::TestsStart)
        } else if let Some(code) = rest.strip_prefix("exit ") {
            code.trim().parse().ok().map(Marker::Exit)
        } else {
            rest.strip_prefix("failed: ")
                .map(|why| Marker::Failed(why.to_string()))
        }
    }
}

/// Whether KVM is worth trying: `/dev/kvm` opens read-write and has not
/// failed in this run.
pub fn kvm_usable() -> bool {
    !KVM_BROKEN.load(Ordering::Relaxed)
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Boots, runs the tests and powers off: KVM when usable, else (or when KVM
/// turns out not to work) TCG.
pub fn run(boot: &Boot) -> anyhow::Result<Outcome> {
    if kvm_usable() {
        match attempt(boot, Accel::Kvm)? {
            Attempt::Done(outcome) => return Ok(outcome),
            Attempt::KvmBroken(why) => {
                KVM_BROKEN.store(true, Ordering::Relaxed);
                eprintln!(
                    "xtask: KVM does not run guests here ({why}): emulating with TCG instead (slower)"
                );
            }
        }
    }
    match attempt(boot, Accel::Tcg)? {
        Attempt::Done(outcome) => Ok(outcome),
        Attempt::KvmBroken(why) => bail!("the VM did not boot under TCG: {why}"),
    }
}

enum Attempt {
    Done(Outcome),
    KvmBroken(String),
}

enum Event {
    Out(String),
    Err(String),
    Closed,
}

fn command(boot: &Boot, accel: Accel) -> Command {
    let mut cmd = Command::new(QEMU);
    let (accel_arg, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    cmd.args(["-accel", accel_arg, "-cpu", cpu])
        .args(["-smp", &CPUS.to_string(), "-m", MEMORY])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 edd=off panic=-1 loglevel=5 {}",
            boot.cmdline
        ))
        .args([
            "-virtfs",
            "local,path=/,mount_tag=cwatchroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn attempt(boot: &Boot, accel: Accel) -> anyhow::Result<Attempt> {
    let mut cmd = command(boot, accel);
    eprintln!("xtask: $ {cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {QEMU}"))?;
    let log = match accel {
        Accel::Kvm => boot.log.with_extension("kvm.log"),
        Accel::Tcg => boot.log.clone(),
    };
    let mut vm = Vm::new(&mut child, &log)?;
    let result = vm.follow(accel, started, boot.suite_limit);
    // Stop qemu whatever happened (it is ours: by its pid, through Child).
    if child.try_wait()?.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    match result {
        Ok(Some(outcome)) => Ok(Attempt::Done(outcome)),
        Ok(None) => {
            Ok(Attempt::KvmBroken(vm.kvm_trouble.take().unwrap_or_else(
                || format!("no init after {} s", KVM_PROBE.as_secs()),
            )))
        }
        Err(err) => {
            vm.show_tail();
            Err(anyhow::anyhow!("{err:#} (console log: {})", log.display()))
        }
    }
}

/// A running VM's console.
struct Vm {
    events: mpsc::Receiver<Event>,
    log: std::fs::File,
    /// Boot lines, shown only if the boot fails.
    tail: VecDeque<String>,
    kvm_trouble: Option<String>,
}

impl Vm {
    fn new(child: &mut Child, log: &Path) -> anyhow::Result<Vm> {
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().context("qemu's stdout")?;
        let stderr = child.stderr.take().context("qemu's stderr")?;
        let out = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if out.send(Event::Out(line)).is_err() {
                    return;
                }
            }
            let _ = out.send(Event::Closed);
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(Event::Err(line)).is_err() {
                    return;
                }
            }
        });
        let log =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Ok(Vm {
            events,
            log,
            tail: VecDeque::new(),
            kvm_trouble: None,
        })
    }

    /// Follows the console to the tests' exit. `Ok(None)`: KVM did not get
    /// the guest to its init.
    fn follow(
        &mut self,
        accel: Accel,
        started: Instant,
        suite_limit: Duration,
    ) -> anyhow::Result<Option<Outcome>> {
        let mut init = false;
        let mut tests: Option<Instant> = None;
        loop {
            let deadline = match (accel, init, tests) {
                (Accel::Kvm, false, _) => started + KVM_PROBE,
                (_, _, None) => started + BOOT_LIMIT,
                (_, _, Some(t)) => t + suite_limit,
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(wait) {
                Ok(event) => event,
                Err(mpsc::RecvTimeoutError::Timeout) if accel == Accel::Kvm && !init => {
                    return Ok(None);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if tests.is_none() => {
                    bail!(
                        "the VM did not reach the tests within {} s",
                        BOOT_LIMIT.as_secs()
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "the tests did not finish within {} min",
                        suite_limit.as_secs() / 60
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Event::Closed,
            };
            let line = match event {
                Event::Closed if accel == Accel::Kvm && !init => return Ok(None),
                Event::Closed => bail!("qemu exited before the tests finished"),
                Event::Err(line) => {
                    writeln!(self.log, "qemu: {line}")?;
                    if line.contains("KVM internal error") || line.contains("failed to set MSR") {
                        self.kvm_trouble.get_or_insert(line.clone());
                    }
                    if accel == Accel::Kvm && !init && self.kvm_trouble.is_some() {
                        return Ok(None);
                    }
                    self.keep(format!("qemu: {line}"));
                    continue;
                }
                Event::Out(line) => line,
            };
            writeln!(self.log, "{:7.1} {line}", started.elapsed().as_secs_f64())?;
            match Marker::parse(&line) {
                Some(Marker::Init) => init = true,
                Some(Marker::TestsStart) => {
                    tests = Some(Instant::now());
                    eprintln!(
                        "xtask: booted in {:.0?} ({}): {line}",
                        started.elapsed(),
                        accel.name()
                    );
                    continue;
                }
                Some(Marker::Exit(exit)) => {
                    let t = tests.context("the guest exited before its tests started")?;
                    return Ok(Some(Outcome {
                        accel,
                        boot: t.duration_since(started),
                        suite: t.elapsed(),
                        exit,
                    }));
                }
                Some(Marker::Failed(why)) => bail!("the guest's init failed: {why}"),
                None => {}
            }
            if tests.is_some() {
                println!("{line}");
            } else {
                self.keep(line);
            }
        }
    }

    fn keep(&mut self, line: String) {
        if self.tail.len() == 40 {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn show_tail(&self) {
        if self.tail.is_empty() {
            return;
        }
        eprintln!("xtask: the VM's last console lines before its tests:");
        for line in &self.tail {
            eprintln!("  {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Marker;

    #[test]
    fn markers() {
        assert_eq!(Marker::parse("cwatch-vm: init"), Some(Marker::Init));
        assert_eq!(
            Marker::parse("cwatch-vm: tests start (6.1.0-57-amd64, 2 CPUs)\r"),
            Some(Marker::TestsStart)
        );
        assert_eq!(
            Marker::parse("cwatch-vm: exit 101"),
            Some(Marker::Exit(101))
        );
        assert_eq!(
            Marker::parse("cwatch-vm: failed: loopback up"),
            Some(Marker::Failed("loopback up".into()))
        );
        assert_eq!(Marker::parse("[    1.0] cwatch-vm: init"), None);
        assert_eq!(Marker::parse("test fields::x ... ok"), None);
    }
}
