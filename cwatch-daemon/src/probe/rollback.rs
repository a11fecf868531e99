/*!
Nothing half-started: a start that fails after the loader pinned maps
(a program the kernel refuses to load or attach) removes the pins it
created, and the pin directory if it made it, so the next start (or
`cwatch doctor`) finds the host as it was. Pins that were there before
hold the previous run's records and are never touched. Programs need no
rollback: they are detached when the loader's object is dropped.
*/
use std::path::{Path, PathBuf};

use super::pins;

/// What was in the pin directory before this start; undone on drop unless
/// [`Rollback::keep`] was called.
#[derive(Debug)]
pub struct Rollback {
    dir: Option<PathBuf>,
    dir_existed: bool,
    new_pins: Vec<PathBuf>,
    keep: bool,
}

impl Rollback {
    /// Notes what `dir` holds now (nothing to undo for `None`: no pins);
    /// `created`: the directory exists only because this start made it.
    pub fn before(dir: Option<&Path>, created: bool) -> Self {
        let new_pins = dir.map_or_else(Vec::new, |dir| {
            pins::names()
                .map(|name| dir.join(name))
                .filter(|path| !path.exists())
                .collect()
        });
        Self {
            dir_existed: dir.is_some_and(Path::exists) && !created,
            dir: dir.map(Path::to_path_buf),
            new_pins,
            keep: false,
        }
    }

    /// The start succeeded: keep everything.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let mut removed = 0;
        for pin in &self.new_pins {
            if std::fs::remove_file(pin).is_ok() {
                removed += 1;
            }
        }
        if let Some(dir) = &self.dir
            && !self.dir_existed
        {
            let _ = std::fs::remove_dir(dir);
        }
        if removed > 0 {
            tracing::info!(removed, "start failed: removed the pins it had created");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_removes_only_what_it_created() {
        let base = std::env::temp_dir().join(format!("cwatch-rollback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let specs = pins::specs(64);
        // A fresh directory: everything goes, the directory too.
        let fresh = base.join("fresh");
        {
            let _undo = Rollback::before(Some(&fresh), false);
            std::fs::create_dir_all(&fresh).unwrap();
            for spec in &specs {
                std::fs::write(fresh.join(spec.name), "").unwrap();
            }
        }
        assert!(!fresh.exists(), "the directory it made is gone");
        // One the claim made just before (empty, locked): gone too.
        let claimed = base.join("claimed");
        std::fs::create_dir_all(&claimed).unwrap();
        {
            let _undo = Rollback::before(Some(&claimed), true);
            std::fs::write(claimed.join(specs[0].name), "").unwrap();
        }
        assert!(!claimed.exists(), "the directory the claim made is gone");
        // A previous run's pins stay; only the new one goes.
        let old = base.join("old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(specs[0].name), "records").unwrap();
        {
            let _undo = Rollback::before(Some(&old), false);
            std::fs::write(old.join(specs[1].name), "").unwrap();
        }
        assert!(old.join(specs[0].name).exists());
        assert!(!old.join(specs[1].name).exists());
        // A start that succeeded keeps what it made.
        {
            let mut undo = Rollback::before(Some(&old), false);
            std::fs::write(old.join(specs[1].name), "").unwrap();
            undo.keep();
        }
        assert!(old.join(specs[1].name).exists());
        drop(Rollback::before(None, false));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
