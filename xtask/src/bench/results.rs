//! `results.json`: every target figure of a run, machine-readable, beside
//! RESULTS.md. The next run reads the previous file and shows its figures
//! in a "before" column, matched by each figure's stable `id`. A full run
//! writes bench/results.json (commit it with RESULTS.md); quick and partial
//! runs write theirs under target/.
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One target's figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable key across runs, e.g. `kernel.ns_per_conn`.
    pub id: String,
    /// The target as the report words it.
    pub what: String,
    /// The figure the target is judged on; `None`: not measured.
    pub value: Option<f64>,
    pub unit: String,
    /// The figure as the report shows it (with its spread or context).
    pub shown: String,
    /// Met, missed, or not measured.
    pub met: Option<bool>,
    /// How the figure was arrived at, where the report alone would not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    /// The command that wrote it.
    pub written_by: String,
    pub date: String,
    /// `git describe --always --dirty` of the tree measured.
    pub commit: String,
    /// Seconds the run took.
    pub elapsed_s: f64,
    pub figures: Vec<Figure>,
}

impl ResultsFile {
    pub fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }
}

/// The previous run's file, if there is one; a file that cannot be read is
/// reported and ignored (the run goes on without a before column).
pub fn read(path: &Path) -> Option<ResultsFile> {
    let text = std::fs::read_to_string(path).ok()?;
    match parse(&text) {
        Ok(file) => Some(file),
        Err(e) => {
            eprintln!(
                "bench: ignoring {} (no before column): {e:#}",
                path.display()
            );
            None
        }
    }
}

pub fn parse(text: &str) -> anyhow::Result<ResultsFile> {
    serde_json::from_str(text).context("not a results.json of this bench")
}

pub fn write(path: &Path, file: &ResultsFile) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(file)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `git describe --always --dirty` of the workspace ("unknown" without git).
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(crate::util::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_file_parses_and_ids_are_unique() {
        let path = crate::util::workspace_root().join("bench/results.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let file = parse(&text).unwrap();
        let mut ids: Vec<&str> = file.figures.iter().map(|f| f.id.as_str()).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate ids in {}", path.display());
        assert!(file.figure("kernel.ns_per_conn").is_some());
    }

    #[test]
    fn round_trip_and_bad_input() {
        let file = ResultsFile {
            written_by: "cargo xtask bench".into(),
            date: "2026-01-01 00:00 UTC".into(),
            commit: "abc1234".into(),
            elapsed_s: 1.0,
            figures: vec![Figure {
                id: "a.b".into(),
                what: "a ≤ 1".into(),
                value: None,
                unit: "s".into(),
                shown: "not measured".into(),
                met: None,
                note: Some("why".into()),
            }],
        };
        let text = serde_json::to_string(&file).unwrap();
        assert_eq!(parse(&text).unwrap(), file);
        assert!(parse("{").is_err());
        assert!(parse("{\"figures\": 3}").is_err());
    }
}
