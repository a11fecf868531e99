//! The shapes of connection churn `cwatch-churn` makes, so that no single
//! shape flatters a figure: which end passes through CLOSE_WAIT (or none),
//! and a used-connection mix with long-lived connections open beside it.
//! Shared by the bench and the soak.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// One shape of churn: `cwatch-churn` arguments and what they mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Churn {
    /// Short name (tables, results ids).
    pub name: &'static str,
    pub args: &'static [&'static str],
    /// What it does, for a report.
    pub what: &'static str,
}

/// The default: the client closes first, the server end passes through
/// CLOSE_WAIT (a real leak's lifecycle, closed promptly).
pub const CLIENT: Churn = Churn {
    name: "client",
    args: &[],
    what: "`--close client` (default): the client closes first, the server end passes CLOSE_WAIT",
};

pub const SERVER: Churn = Churn {
    name: "server",
    args: &["--close", "server"],
    what: "`--close server`: the server closes first, the client end passes CLOSE_WAIT",
};

/// No end passes through CLOSE_WAIT: every transition is one a CLOSE_WAIT
/// watcher has nothing to do with.
pub const RESET: Churn = Churn {
    name: "reset",
    args: &["--close", "reset"],
    what: "`--close reset`: the client resets, no end passes CLOSE_WAIT",
};

/// Used connections (64 bytes each way) beside 1,000 long-lived ones.
pub const EXCHANGE: Churn = Churn {
    name: "exchange",
    args: &["--exchange", "--long-lived", "1000"],
    what: "`--exchange --long-lived 1000`: 64 B each way per connection, 1,000 long-lived connections open",
};

/// Every shape, the default first.
pub const ALL: [Churn; 4] = [CLIENT, SERVER, RESET, EXCHANGE];

/// What one `cwatch-churn` run did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChurnRun {
    pub conns: u64,
    /// Connects that found no free port.
    pub errors: u64,
    pub secs: f64,
    pub rate: f64,
    /// The generator's CPU time per connection.
    pub cpu_ns: f64,
}

impl Churn {
    /// `cwatch-churn` arguments for a run of `secs` seconds.
    pub fn args(&self, secs: f64) -> Vec<String> {
        let mut args = vec!["--seconds".to_string(), format!("{secs}")];
        args.extend(self.args.iter().map(|a| a.to_string()));
        args
    }

    /// Runs `bin` (cwatch-churn) in this shape for `secs` seconds.
    pub fn run(&self, bin: &Path, secs: f64) -> anyhow::Result<ChurnRun> {
        let out = Command::new(bin)
            .args(self.args(secs))
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{} failed ({}): {text}{}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&text)
    }
}

/// Parses `conns N errors E secs S rate R cpu_ns C`.
pub fn parse(line: &str) -> anyhow::Result<ChurnRun> {
    let field = |name: &str| -> anyhow::Result<f64> {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == name {
                return words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("bad {name} in {line:?}"));
            }
        }
        bail!("no {name} in {line:?}")
    };
    Ok(ChurnRun {
        conns: field("conns")? as u64,
        errors: field("errors")? as u64,
        secs: field("secs")?,
        rate: field("rate")?,
        cpu_ns: field("cpu_ns")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_line() {
        let run = parse("conns 120 errors 2 secs 0.500000 rate 240.0 cpu_ns 31000.5\n").unwrap();
        assert_eq!(run.conns, 120);
        assert_eq!(run.errors, 2);
        assert_eq!(run.rate, 240.0);
        assert_eq!(run.cpu_ns, 31000.5);
        assert!(parse("conns 1 errors x").is_err());
        assert_eq!(
            EXCHANGE.args(2.0),
            ["--seconds", "2", "--exchange", "--long-lived", "1000"]
        );
    }
}
