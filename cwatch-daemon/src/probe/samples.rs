//! The connect-time stack samples in `SAMPLES`: taken out (read, then
//! deleted, so the kernel memory goes as soon as the daemon has the
//! sample) and counted.
use cwatch_common::StackSample;

use super::Probes;

impl Probes {
    /// The sample of `cookie`'s connect(), removed from the kernel map;
    /// `None` when there is none (not watched, not captured, or taken).
    pub fn take_sample(&self, cookie: u64) -> Option<Box<StackSample>> {
        let map = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let sample = map.get(&cookie, 0).ok().map(Box::new)?;
        drop(map);
        self.forget_samples(&[cookie]);
        Some(sample)
    }

    /// Deletes the samples of `cookies` (gone already is fine).
    pub fn forget_samples(&self, cookies: &[u64]) {
        let mut map = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        for cookie in cookies {
            let _ = map.remove(cookie);
        }
    }

    /// Samples the kernel holds now.
    pub fn samples_held(&self) -> usize {
        let map = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().filter(Result::is_ok).count()
    }
}
