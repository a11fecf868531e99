//! `RESULTS.md`: the machine, every target with the previous run's figure
//! beside the new one (before → after, from the previous results.json),
//! how long each section took, then one part per section, each rendered by
//! its own module.
use std::{fmt::Write as _, time::Duration};

use cwatch_testkit::soak::Outcome;

use super::{
    attribution::Attribution, cost::ShapeCost, latency::Latency, overhead::Overhead, quiet::Quiet,
    results::ResultsFile, scale::Scale,
};

pub struct Results {
    pub machine: Vec<(String, String)>,
    /// The command line, as the report names it.
    pub command: String,
    pub overhead: Option<Overhead>,
    pub cost: Option<Vec<ShapeCost>>,
    pub quiet: Option<Quiet>,
    pub latency: Option<Latency>,
    pub attribution: Option<Attribution>,
    pub scale: Option<Scale>,
    /// The soak's length (s) and what it saw.
    pub soak: Option<(u64, Outcome)>,
    /// How long each section took.
    pub timings: Vec<(&'static str, Duration)>,
    pub elapsed: Duration,
    pub load_at_end: String,
    pub date: String,
}

pub fn render(r: &Results, before: Option<&ResultsFile>, now: &ResultsFile) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# cwatch benchmark results\n");
    let _ = writeln!(
        s,
        "Written by `{}` in {:.0} s (tree {}). Every figure is a median over repeated runs \
         on a shared, noisy machine (other builds and tests may run at the same time); the \
         spread is shown next to it.\n",
        r.command,
        r.elapsed.as_secs_f64(),
        now.commit
    );
    let _ = writeln!(s, "| machine | |\n|---|---|");
    for (k, v) in &r.machine {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s, "| load average at end | {} |", r.load_at_end);
    let _ = writeln!(s, "| date | {} |\n", r.date);

    let _ = writeln!(s, "## Targets\n");
    match before {
        Some(b) => {
            let _ = writeln!(
                s,
                "Before: the run of {} (tree {}, `results.json` of the previous run).\n",
                b.date, b.commit
            );
        }
        None => {
            let _ = writeln!(s, "No previous `results.json`: no before column.\n");
        }
    }
    let _ = writeln!(s, "| target | before | now | |\n|---|---|---|---|");
    for f in &now.figures {
        let verdict = match f.met {
            Some(true) => "met",
            Some(false) => "**MISSED**",
            None => "not judged",
        };
        let was = before
            .and_then(|b| b.figure(&f.id))
            .map_or("—".to_string(), |b| match &b.note {
                Some(note) => format!("{} ({note})", b.shown),
                None => b.shown.clone(),
            });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {verdict} |",
            cell(&f.what),
            cell(&was),
            cell(&f.shown)
        );
    }

    let _ = writeln!(s, "\n## Run time\n\n| section | s |\n|---|---|");
    for (what, d) in &r.timings {
        let _ = writeln!(s, "| {what} | {:.0} |", d.as_secs_f64());
    }
    let _ = writeln!(s, "| **all** | **{:.0}** |", r.elapsed.as_secs_f64());

    let mut n = 0;
    let mut section = |s: &mut String, title: &str| {
        n += 1;
        let _ = writeln!(s, "\n## {n}. {title}\n");
    };
    if let Some(o) = &r.overhead {
        section(&mut s, "Churn overhead");
        super::overhead::render(o, &mut s);
    }
    if let Some(c) = &r.cost {
        section(&mut s, "Kernel cost per event");
        super::cost::render(c, &mut s);
    }
    if let Some(q) = &r.quiet {
        section(&mut s, "A quiet host");
        super::quiet::render(q, &mut s);
    }
    if let Some(l) = &r.latency {
        section(&mut s, "Detection latency");
        super::latency::render(l, &mut s);
    }
    if let Some(a) = &r.attribution {
        section(&mut s, "Attribution at scale");
        super::attribution::render(a, &mut s);
    }
    if let Some(sc) = &r.scale {
        section(&mut s, "Scale");
        super::scale::render(sc, &mut s);
    }
    if let Some((secs, o)) = &r.soak {
        section(&mut s, "Soak");
        super::soak::render(*secs, o, &mut s);
    }
    s
}

/// Text for a table cell: `|` escaped.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `date -u`, as the report shows it.
pub fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
