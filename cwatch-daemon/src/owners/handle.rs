//! How the rest of the daemon hands work to the attribution thread.
use std::sync::{Arc, mpsc};

use tracing::warn;

use super::{Work, run};
use crate::Shared;

/// Hands work to the attribution thread.
#[derive(Debug)]
pub struct Handle(std::sync::Mutex<Option<mpsc::Sender<Work>>>);

impl Default for Handle {
    fn default() -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

impl Handle {
    /// Starts the worker thread.
    pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let worker = Arc::clone(shared);
        std::thread::Builder::new()
            .name("cwatch-owners".into())
            .spawn(move || run(worker, rx))?;
        *shared.owners.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Ok(())
    }

    pub fn request(&self, work: Work) {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref()
            && tx.send(work).is_err()
        {
            warn!("attribution thread is gone");
        }
    }

    /// Stops the worker (it exits at its next tick).
    pub fn stop(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
