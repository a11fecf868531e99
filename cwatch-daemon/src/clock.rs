/*!
Where "now" comes from. Ages use CLOCK_BOOTTIME, the clock the kernel stamps
records with (`bpf_ktime_get_boot_ns`), so a suspended host does not make a
leak look younger. The clock is injected so that ages, graces and deadlines
are tested without a kernel. And [`thread_cpu`], the clock CPU budgets
are kept in.
*/

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// CLOCK_BOOTTIME in nanoseconds.
    fn now_ns(&self) -> u64;
}

/// The real CLOCK_BOOTTIME.
pub struct BootClock;

impl Clock for BootClock {
    fn now_ns(&self) -> u64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        // Both fields are non-negative for CLOCK_BOOTTIME.
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }
}

/// The CPU time the calling thread has used (what budgets are kept in).
pub fn thread_cpu() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    std::time::Duration::new(t.tv_sec.unsigned_abs(), t.tv_nsec.unsigned_abs() as u32)
}

/// A clock a test sets by hand.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

#[cfg(test)]
impl ManualClock {
    pub fn at(ns: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(ns.into()))
    }

    pub fn advance(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(ns, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for std::sync::Arc<ManualClock> {
    fn now_ns(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
