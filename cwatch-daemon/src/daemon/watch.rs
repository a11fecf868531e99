/*!
The kernel's watch list: the processes whose connect() the programs record
(their owner goes into the socket's storage, so a socket of theirs that
stays in CLOSE_WAIT names its owner at once). Every other connection costs
the programs one word of `CONTROL`. Who is on it (`watch`): processes once
they hold a leaked socket (`leakers`, the default), processes with the names
the configuration gives (`comm:NAME`), or everyone (`all`, for debugging:
every connection then pays for a storage allocation).

Kept in step every [`WATCH_EVERY`] from the table's groups: a process that
no longer leaks (or exited) leaves the list.
*/
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use cwatch_common::{WATCH_ALL, WATCH_LISTED, WATCH_NONE, WATCHED_WORDS, control};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{config::Watch, owners::ProcRoot, probe::Probes, state::State};

/// How often the list is brought in line with the table.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The watch-list task.
pub struct Task {
    pub state: Arc<State>,
    pub probes: Arc<Probes>,
    pub proc: ProcRoot,
}

/// What the kernel has now: the mode and the pids whose bit is set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub mode: u32,
    pub pids: BTreeSet<u32>,
}

/// The list `watch` asks for, given the pids that leak now and a way to
/// find processes by name.
pub fn wanted(
    watch: &Watch,
    leakers: impl IntoIterator<Item = u32>,
    by_name: impl FnOnce(&[String]) -> Vec<u32>,
) -> Listed {
    if watch.all {
        return Listed {
            mode: WATCH_ALL,
            pids: BTreeSet::new(),
        };
    }
    let mut pids = BTreeSet::new();
    if watch.leakers {
        pids.extend(leakers);
    }
    if !watch.comms.is_empty() {
        pids.extend(by_name(&watch.comms));
    }
    pids.retain(|p| *p < WATCHED_WORDS * 64);
    let mode = if pids.is_empty() {
        WATCH_NONE
    } else {
        WATCH_LISTED
    };
    Listed { mode, pids }
}

/// The bitmap words that differ between `old` and `new`: (word, value).
pub fn changed_words(old: &BTreeSet<u32>, new: &BTreeSet<u32>) -> Vec<(u32, u64)> {
    let words: BTreeSet<u32> = old.symmetric_difference(new).map(|p| p / 64).collect();
    words
        .into_iter()
        .map(|w| {
            let value = new
                .range(w * 64..(w + 1) * 64)
                .fold(0u64, |acc, p| acc | (1u64 << (p % 64)));
            (w, value)
        })
        .collect()
}

impl Task {
    /// Keeps the list in step until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut listed = Listed::default();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let config = self.state.config();
            let leakers: Vec<u32> = {
                let now = self.state.clock.now_ns();
                let summary = self.state.lock_table().summary(now, config.leak_after);
                summary
                    .processes
                    .iter()
                    .filter(|(_, g)| g.leaked > 0)
                    .filter_map(|(k, _)| k.pid)
                    .collect()
            };
            let proc = &self.proc;
            let want = wanted(&config.watch, leakers, |names| {
                proc.pids()
                    .into_iter()
                    .filter(|p| {
                        proc.comm(*p)
                            .is_some_and(|c| names.iter().any(|n| c.as_str() == n.as_str()))
                    })
                    .collect()
            });
            if want == listed {
                continue;
            }
            match self.apply(&listed, &want) {
                Ok(()) => {
                    debug!(
                        mode = want.mode,
                        pids = want.pids.len(),
                        "watch list updated"
                    );
                    listed = want;
                }
                Err(err) => warn!("updating the kernel's watch list: {err}"),
            }
        }
    }

    fn apply(&self, old: &Listed, new: &Listed) -> Result<(), crate::probe::ProbeError> {
        self.probes
            .set_watched(&changed_words(&old.pids, &new.pids))?;
        self.probes.set_control(control::WATCHING, new.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leakers_names_and_all() {
        let w = Watch::default();
        let l = wanted(&w, [7, 300], |_| unreachable!("no names configured"));
        assert_eq!(l.mode, WATCH_LISTED);
        assert_eq!(l.pids, BTreeSet::from([7, 300]));
        assert_eq!(wanted(&w, [], |_| vec![]).mode, WATCH_NONE);
        let named = Watch {
            leakers: false,
            comms: vec!["order-svc".into()],
            all: false,
        };
        let l = wanted(&named, [7], |names| {
            assert_eq!(names, ["order-svc"]);
            vec![42]
        });
        assert_eq!(
            l.pids,
            BTreeSet::from([42]),
            "leakers off: 7 is not watched"
        );
        let all = Watch {
            all: true,
            ..Watch::default()
        };
        assert_eq!(wanted(&all, [7], |_| vec![]).mode, WATCH_ALL);
    }

    #[test]
    fn only_changed_words_are_written() {
        let old = BTreeSet::from([1, 2, 130]);
        let new = BTreeSet::from([1, 65, 130]);
        assert_eq!(
            changed_words(&old, &new),
            vec![(0, 1 << 1), (1, 1 << 1)],
            "word 0 loses pid 2, word 1 gains pid 65, word 2 is unchanged"
        );
        assert!(changed_words(&new, &new).is_empty());
    }
}
