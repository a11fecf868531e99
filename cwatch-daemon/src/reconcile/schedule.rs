/*!
When a reconciliation pass is full, and what one costs.

A full pass (a sock_diag dump in every namespace, the kernel map read whole,
and a walk of `/proc` if some socket has no known holder) runs when the
kernel counted an event lost or a record it could not store since the last
one — the only ways the table can drift from the kernel — and otherwise as a
safety net, which also repairs records deleted from the map behind cwatch's
back and finds holders that appeared without a fork: every [`FULL_EVERY`]
intervals, or less often when the last full pass and its walk of `/proc`
cost more CPU than `--reconcile-budget` (a share of one core) allows. At a
million sockets one costs about 16 CPU-seconds: at the default 0.5 % the
safety net then runs about once an hour instead of six times. An interval
without a full pass costs a read of the kernel's counters.
*/
use std::time::{Duration, Instant};

/// Intervals between two safety-net full passes, at the least.
pub const FULL_EVERY: u32 = 10;

/// How far apart safety-net full passes are: [`FULL_EVERY`] intervals, or
/// longer where `cost` (the CPU of the last full pass and of its walk)
/// spread over that time would be more than `budget_ppm` millionths of a
/// core.
pub fn safety_net(interval: Duration, cost: Duration, budget_ppm: u32) -> Duration {
    let floor = interval.saturating_mul(FULL_EVERY);
    let spaced = cost.as_secs_f64() * 1e6 / f64::from(budget_ppm.max(1));
    floor.max(Duration::try_from_secs_f64(spaced).unwrap_or(Duration::MAX))
}

/// What the schedule remembers from pass to pass.
#[derive(Debug, Default)]
pub struct Schedule {
    passes_since_full: u32,
    /// The kernel's loss counters as the last full pass saw them.
    evidence: Option<u64>,
    last_full: Option<Instant>,
}

/// Why a pass is full, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Drift is possible (the kernel counted a loss, a suspect waits, or
    /// the counters cannot be read).
    Evidence,
    /// The safety net is due.
    Periodic,
}

impl Schedule {
    /// Decides the pass starting now (the safety net first: it also walks
    /// `/proc`). `evidence`: the kernel's loss
    /// counters (`None`: unreadable); `suspects`: sockets the last pass
    /// wants to see again; `spacing`: [`safety_net`] now.
    pub fn decide(
        &mut self,
        evidence: Option<u64>,
        suspects: bool,
        spacing: Duration,
        now: Instant,
    ) -> Option<Full> {
        self.passes_since_full += 1;
        let due = self.passes_since_full >= FULL_EVERY
            && self
                .last_full
                .is_none_or(|t| now.saturating_duration_since(t) >= spacing);
        let full = if due {
            Full::Periodic
        } else if suspects || evidence.is_none() || evidence != self.evidence {
            Full::Evidence
        } else {
            return None;
        };
        self.passes_since_full = 0;
        self.evidence = evidence;
        self.last_full = Some(now);
        Some(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_safety_net_is_ten_intervals_or_what_the_budget_affords() {
        // A cheap pass: ten intervals.
        let cheap = Duration::from_millis(200);
        assert_eq!(safety_net(MIN, cheap, 5000), MIN * 10);
        // 16 CPU-s at 0.5 % of a core: 3,200 s apart.
        let big = Duration::from_secs(16);
        assert_eq!(safety_net(MIN, big, 5000), Duration::from_secs(3200));
        // A whole core allows one right after another: ten intervals.
        assert_eq!(safety_net(MIN, big, 1_000_000), MIN * 10);
        assert_eq!(safety_net(MIN, Duration::MAX, 1), Duration::MAX);
    }

    #[test]
    fn evidence_makes_a_pass_full_and_the_safety_net_waits_for_its_spacing() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let spacing = MIN * 30; // the budget's, above ten intervals
        assert_eq!(s.decide(Some(0), false, spacing, t0), Some(Full::Evidence));
        // Nothing moved: skipped, also past ten passes, until the spacing.
        for i in 1..=29 {
            assert_eq!(s.decide(Some(0), false, spacing, t0 + MIN * i), None, "{i}");
        }
        assert_eq!(
            s.decide(Some(0), false, spacing, t0 + MIN * 30),
            Some(Full::Periodic)
        );
        // A loss counted: full at once, and the safety net starts again.
        let t1 = t0 + MIN * 31;
        assert_eq!(s.decide(Some(3), false, spacing, t1), Some(Full::Evidence));
        assert_eq!(s.decide(Some(3), false, spacing, t1 + MIN), None);
        assert_eq!(
            s.decide(Some(3), true, spacing, t1 + MIN * 2),
            Some(Full::Evidence)
        );
        assert_eq!(
            s.decide(None, false, spacing, t1 + MIN * 3),
            Some(Full::Evidence)
        );
        // Cheap passes: every tenth, whatever the clock says.
        let mut s = Schedule::default();
        s.decide(Some(0), false, Duration::ZERO, t0);
        let full: Vec<u32> = (1..=20)
            .filter(|_| s.decide(Some(0), false, Duration::ZERO, t0).is_some())
            .collect();
        assert_eq!(full, vec![10, 20]);
    }
}
