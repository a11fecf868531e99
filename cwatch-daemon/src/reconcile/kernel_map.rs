/*!
The kernel's pinned `CLOSE_WAIT` map brought in line with the dump: records
written for CLOSE_WAIT sockets it lacks (those a restart must find with
their true start and owner), records deleted for sockets no longer in
CLOSE_WAIT. The start-up pass leaves its write-back (a million records take
seconds) for after ready.
*/
use std::collections::HashMap;

use cwatch_common::SockRecord;
use tracing::info;

use super::Reconciler;
use crate::kernel_view::KernelView;

/// Differences between the kernel's `CLOSE_WAIT` map and the dump.
#[derive(Debug, Default)]
pub struct MapFixes {
    missing: Vec<u64>,
    stale: Vec<u64>,
}

#[cfg(test)]
impl MapFixes {
    pub fn missing(&self) -> &[u64] {
        &self.missing
    }
}

/// Records written to the kernel map per hold of the table's lock.
const WRITE_BACK_CHUNK: usize = 4096;

impl Reconciler {
    /// What the kernel map lacks (CLOSE_WAIT sockets of the table it has
    /// no record of) and holds in excess (records of sockets no longer in
    /// CLOSE_WAIT), by cookie.
    pub(super) fn map_differences(
        view: &KernelView,
        map: &HashMap<u64, SockRecord>,
        young: &HashMap<u64, SockRecord>,
        dump_start_ns: u64,
    ) -> MapFixes {
        let missing = view
            .close_wait
            .keys()
            .filter(|cookie| !map.contains_key(cookie) && !young.contains_key(cookie))
            .copied()
            .collect();
        MapFixes {
            missing,
            stale: view.gone_from(map, dump_start_ns),
        }
    }

    /// Writes the records of the table's sockets among `fixes.missing`
    /// (those still tracked) into the kernel map and deletes the stale
    /// ones: (written, deleted).
    pub(super) fn fix_map(&self, fixes: &MapFixes) -> anyhow::Result<(u64, u64)> {
        let mut written = 0;
        for chunk in fixes.missing.chunks(WRITE_BACK_CHUNK) {
            let records: Vec<SockRecord> = {
                let table = self.state.lock_table();
                chunk
                    .iter()
                    .filter_map(|cookie| table.get(*cookie).map(|e| e.to_record()))
                    .collect()
            };
            self.probes.update_close_wait(&records, &[])?;
            written += records.len() as u64;
        }
        // A socket the young scanner is reporting is its to drop if gone.
        let stale: Vec<u64> = {
            let table = self.state.lock_table();
            fixes
                .stale
                .iter()
                .copied()
                .filter(|cookie| !table.is_reporting(*cookie))
                .collect()
        };
        self.probes.update_close_wait(&[], &stale)?;
        Ok((written, stale.len() as u64))
    }

    /// The start-up pass's write-back of the sockets it found, after ready.
    pub fn finish_start_up(&mut self) -> anyhow::Result<()> {
        if let Some(fixes) = self.deferred.take() {
            let started = std::time::Instant::now();
            let (written, _) = self.fix_map(&fixes)?;
            info!(
                sockets = written,
                took_ms = started.elapsed().as_millis() as u64,
                "start-up reconciliation: wrote the sockets found into the kernel map"
            );
        }
        Ok(())
    }
}
