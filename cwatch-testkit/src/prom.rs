//! A small reader for the Prometheus text exposition format: enough to find
//! a sample by name and labels, and strict enough that a malformed line from
//! the daemon fails the test instead of being skipped.
use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of a scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> anyhow::Result<Scrape> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).with_context(|| format!("line {}: {line:?}", n + 1))?);
        }
        Ok(Scrape {
            samples,
            text: text.to_string(),
        })
    }

    /// Samples named `name` whose labels include every pair in `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The one sample named `name` with exactly these labels, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// A sample without labels; 0 when absent is NOT assumed: absent → None.
    pub fn scalar(&self, name: &str) -> Option<f64> {
        self.get(name, &[])
    }
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches(',');
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = body.split_once("=\"").context("label without =\"")?;
            let (value, after_value) = unquote(after_key)?;
            labels.insert(key.to_string(), value);
            body = after_value;
        }
    }
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Reads an escaped label value up to its closing quote; returns the value
/// and the text after the quote.
fn unquote(text: &str) -> anyhow::Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => value.push(other),
                None => break,
            },
            c => value.push(c),
        }
    }
    bail!("unterminated label value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_specials() {
        let s = Scrape::parse(
            "# HELP x y\n# TYPE x gauge\nx{comm=\"a \\\"b\\\"\",pid=\"1\"} 720\nup 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 1.5e-3\n",
        )
        .unwrap();
        assert_eq!(
            s.get("x", &[("pid", "1"), ("comm", "a \"b\"")]),
            Some(720.0)
        );
        assert_eq!(s.scalar("up"), Some(1.0));
        assert_eq!(s.get("h_bucket", &[("le", "+Inf")]), Some(3.0));
        assert_eq!(s.scalar("h_sum"), Some(0.0015));
        assert_eq!(
            s.get("x", &[("pid", "1")]),
            None,
            "get wants the exact label set"
        );
        assert_eq!(s.find("x", &[("pid", "1")]).count(), 1);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Scrape::parse("x{a=b} 1\n").is_err());
        assert!(Scrape::parse("x 1x\n").is_err());
        assert!(Scrape::parse("x{a=\"b\" 1\n").is_err());
    }
}
