/*!
One log line when a process or a peer first has a leaked socket (CLOSE_WAIT
for at least leak-after), so the journal alone tells the story:

```text
WARN leak: process pid=4242 comm=order-svc holds 360 leaked CLOSE_WAIT sockets (oldest 5m 2s)
WARN leak: peer 10.1.2.3:7000 has 360 leaked CLOSE_WAIT sockets (oldest 5m 2s)
```

A group is named again only after it has had no leaked socket for a while.
At most [`BURST`] lines per minute; beyond that one line says how many were
held back.
*/
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    export::{Exporter, Families, cardinality::Series},
    state::State,
};

/// Lines per minute at most.
pub const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// A pass summarizes the whole table: every few seconds is plenty for a
/// log line about a five-minute threshold.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Which groups were already named, and the rate limit.
#[derive(Debug)]
pub struct Notices {
    named: HashMap<(bool, Vec<String>), ()>,
    window_start: Instant,
    sent: u32,
    held_back: u32,
}

impl Default for Notices {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Notices {
    pub fn new(now: Instant) -> Self {
        Self {
            named: HashMap::new(),
            window_start: now,
            sent: 0,
            held_back: 0,
        }
    }

    /// The lines to log for `families` at `now`.
    pub fn check(
        &mut self,
        families: &Families,
        process_names: &[&str],
        now: Instant,
    ) -> Vec<String> {
        if now.duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.sent = 0;
        }
        let mut lines = Vec::new();
        if self.held_back > 0 && self.sent < BURST {
            lines.push(format!(
                "leak: {} more processes or peers crossed leak-after (held back by the rate limit; see /metrics)",
                self.held_back
            ));
            self.held_back = 0;
            self.sent += 1;
        }
        let mut now_leaking = HashMap::new();
        let groups = families
            .process
            .iter()
            .map(|s| (true, s))
            .chain(families.peer.iter().map(|s| (false, s)));
        for (is_process, s) in groups {
            if s.stats.leaked == 0 {
                continue;
            }
            let key = (is_process, s.labels.clone());
            if !self.named.contains_key(&key) {
                if self.sent < BURST {
                    lines.push(describe(is_process, s, process_names));
                    self.sent += 1;
                } else {
                    self.held_back += 1;
                }
            }
            now_leaking.insert(key, ());
        }
        self.named = now_leaking;
        lines
    }
}

fn describe(is_process: bool, s: &Series, process_names: &[&str]) -> String {
    let oldest = humantime::format_duration(Duration::from_secs(s.stats.oldest.as_secs()));
    if is_process {
        let who: Vec<String> = process_names
            .iter()
            .zip(&s.labels)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", crate::text::for_terminal(v)))
            .collect();
        format!(
            "leak: process {} holds {} leaked CLOSE_WAIT sockets (oldest {oldest})",
            who.join(" "),
            s.stats.leaked
        )
    } else {
        let addr = &s.labels[0];
        let shown = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr.clone()
        };
        format!(
            "leak: peer {shown}:{} has {} leaked CLOSE_WAIT sockets (oldest {oldest})",
            s.labels.get(1).map_or("*", String::as_str),
            s.stats.leaked
        )
    }
}

/// The notices task: it reads the families the exporter builds.
pub struct Task {
    pub state: Arc<State>,
    pub exporter: Arc<Exporter>,
}

impl Task {
    /// Checks every [`CHECK_EVERY`] until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut notices = Notices::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            if !self.state.is_ready() {
                continue;
            }
            let (state, exporter) = (Arc::clone(&self.state), Arc::clone(&self.exporter));
            let built = tokio::task::spawn_blocking(move || exporter.families(&state)).await;
            let Ok(families) = built else {
                continue;
            };
            let names = self.state.config().labels.label_names();
            for line in notices.check(&families, &names, Instant::now()) {
                warn!("{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::GroupStats;

    fn series(labels: &[&str], leaked: u64) -> Series {
        Series {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            stats: GroupStats {
                sockets: leaked + 1,
                leaked,
                oldest: Duration::from_secs(302),
            },
        }
    }

    #[test]
    fn names_each_group_once_and_rate_limits() {
        let t0 = Instant::now();
        let mut n = Notices::new(t0);
        let names = ["pid", "comm"];
        let mut f = Families {
            process: vec![series(&["4242", "order-svc"], 360)],
            peer: vec![series(&["10.1.2.3", "7000"], 360), series(&["::1", "*"], 0)],
            ..Default::default()
        };
        let lines = n.check(&f, &names, t0);
        assert_eq!(
            lines,
            vec![
                "leak: process pid=4242 comm=order-svc holds 360 leaked CLOSE_WAIT sockets (oldest 5m 2s)",
                "leak: peer 10.1.2.3:7000 has 360 leaked CLOSE_WAIT sockets (oldest 5m 2s)",
            ]
        );
        assert!(n.check(&f, &names, t0).is_empty(), "named once");
        f.process[0].stats.leaked = 0;
        assert!(n.check(&f, &names, t0).is_empty());
        f.process[0].stats.leaked = 1;
        assert_eq!(
            n.check(&f, &names, t0).len(),
            1,
            "named again after recovering"
        );

        // 20 new peers at once: BURST lines per minute, then a summary line.
        let many = Families {
            peer: (0..20)
                .map(|i| series(&[&format!("10.0.0.{i}"), "80"], 1))
                .collect(),
            ..Default::default()
        };
        let mut n = Notices::new(t0);
        assert_eq!(n.check(&many, &names, t0).len(), BURST as usize);
        assert!(
            n.check(&many, &names, t0 + Duration::from_secs(1))
                .is_empty()
        );
        let later = n.check(&many, &names, t0 + WINDOW);
        assert_eq!(later.len(), 1);
        assert!(later[0].contains("10 more"), "{later:?}");
    }
}
