//! Every target the bench has, computed from a run's results: the figure it
//! is judged on, the figure as shown, met or missed. A section that did not
//! run still has its rows (not measured), so that results.json always
//! holds every id. The cost targets (churn, kernel, a quiet host) are in
//! `cost`; those of scale, attribution, latency and the soak in `scale`,
//! judged only at 1,000,000 sockets (a run that did not reach it shows its
//! largest level, unjudged).
mod cost;
mod scale;

use super::{report::Results, results::Figure};

struct Rows(Vec<Figure>);

impl Rows {
    fn push(&mut self, id: &str, what: &str, unit: &str, m: Option<(f64, String, Option<bool>)>) {
        let (value, shown, met) = match m {
            Some((v, shown, met)) => (Some(v).filter(|v| v.is_finite()), shown, met),
            None => (None, "not measured".to_string(), None),
        };
        self.0.push(Figure {
            id: id.into(),
            what: what.into(),
            value,
            unit: unit.into(),
            shown,
            met,
            note: None,
        });
    }
}

pub fn figures(r: &Results) -> Vec<Figure> {
    let mut t = Rows(Vec::new());
    cost::churn(r, &mut t);
    cost::kernel(r, &mut t);
    cost::quiet(r, &mut t);
    scale::scale(r, &mut t);
    scale::attribution(r, &mut t);
    scale::latency(r, &mut t);
    scale::soak(r, &mut t);
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed results.json has exactly the ids this bench writes, so
    /// every row has its before figure.
    #[test]
    fn committed_ids_match() {
        let r = Results {
            machine: Vec::new(),
            command: String::new(),
            overhead: None,
            cost: None,
            quiet: None,
            latency: None,
            attribution: None,
            scale: None,
            soak: None,
            timings: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            load_at_end: String::new(),
            date: String::new(),
        };
        let now: Vec<String> = figures(&r).into_iter().map(|f| f.id).collect();
        assert!(
            figures(&r)
                .iter()
                .all(|f| f.met.is_none() && f.value.is_none())
        );
        let path = crate::util::workspace_root().join("bench/results.json");
        let committed = crate::bench::results::parse(&std::fs::read_to_string(path).unwrap())
            .unwrap()
            .figures
            .into_iter()
            .map(|f| f.id)
            .collect::<Vec<_>>();
        assert_eq!(now, committed);
    }
}
