//! How the rest of the daemon hands work to the attribution thread: a
//! cloneable sender; the thread ends when cancelled (or when every handle is
//! gone).
use std::sync::mpsc;

use tracing::warn;

use super::Work;

/// Hands work to the attribution thread.
#[derive(Clone, Debug)]
pub struct Handle(mpsc::Sender<Work>);

impl Handle {
    pub(super) fn new(tx: mpsc::Sender<Work>) -> Self {
        Self(tx)
    }

    pub fn request(&self, work: Work) {
        if self.0.send(work).is_err() {
            warn!("attribution thread is gone");
        }
    }
}
