/*!
Which optional labels the per-process metrics carry (`unit`, `container`,
`exe`) and what one per-process series stands for (a pid, all processes with
one comm, or all processes of one unit): the `labels` and `process_key`
settings. Looking the labels up is the attribution stage's job
(`owners::labels`).
*/
use std::{fmt, str::FromStr};

/// One optional label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerLabel {
    Unit,
    Container,
    Exe,
}

impl OwnerLabel {
    pub fn name(self) -> &'static str {
        match self {
            OwnerLabel::Unit => "unit",
            OwnerLabel::Container => "container",
            OwnerLabel::Exe => "exe",
        }
    }
}

impl FromStr for OwnerLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unit" => Ok(OwnerLabel::Unit),
            "container" => Ok(OwnerLabel::Container),
            "exe" => Ok(OwnerLabel::Exe),
            _ => Err(format!("unknown label {s:?}; use unit, container or exe")),
        }
    }
}

impl fmt::Display for OwnerLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one per-process series stands for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProcessKeyMode {
    /// One series per process (`pid`, `comm`): the contract's default.
    #[default]
    Pid,
    /// One series per process name, `pid="*"`: for hosts with pid churn.
    Comm,
    /// One series per systemd unit, `pid="*"`, `comm="*"`, with `unit`.
    Unit,
}

impl FromStr for ProcessKeyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pid" => Ok(ProcessKeyMode::Pid),
            "comm" => Ok(ProcessKeyMode::Comm),
            "unit" => Ok(ProcessKeyMode::Unit),
            _ => Err(format!("unknown process key {s:?}; use pid, comm or unit")),
        }
    }
}

impl fmt::Display for ProcessKeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProcessKeyMode::Pid => "pid",
            ProcessKeyMode::Comm => "comm",
            ProcessKeyMode::Unit => "unit",
        })
    }
}

/// Which optional labels are on, and the process key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelConfig {
    pub unit: bool,
    pub container: bool,
    pub exe: bool,
    pub process_key: ProcessKeyMode,
}

impl LabelConfig {
    pub fn set(&mut self, labels: &[OwnerLabel]) {
        self.unit = labels.contains(&OwnerLabel::Unit);
        self.container = labels.contains(&OwnerLabel::Container);
        self.exe = labels.contains(&OwnerLabel::Exe);
    }

    /// The labels switched on, in a fixed order.
    pub fn enabled(&self) -> Vec<OwnerLabel> {
        [
            (self.unit, OwnerLabel::Unit),
            (self.container, OwnerLabel::Container),
            (self.exe, OwnerLabel::Exe),
        ]
        .into_iter()
        .filter_map(|(on, l)| on.then_some(l))
        .collect()
    }

    /// The per-process families' label names: pid, comm, then the optional
    /// ones (`unit` always when keyed by unit).
    pub fn label_names(&self) -> Vec<&'static str> {
        let mut names = vec!["pid", "comm"];
        names.extend(self.extra_labels().iter().map(|l| l.name()));
        names
    }

    /// The optional labels the per-process families carry (`unit` always
    /// when keyed by unit), in label order.
    pub fn extra_labels(&self) -> Vec<OwnerLabel> {
        let mut extra = self.enabled();
        if self.process_key == ProcessKeyMode::Unit && !self.unit {
            extra.insert(0, OwnerLabel::Unit);
        }
        extra
    }

    /// Whether any lookup in /proc is needed.
    pub fn needs_proc(&self) -> bool {
        self.unit || self.container || self.exe || self.process_key == ProcessKeyMode::Unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_config_names_and_parsing() {
        let mut c = LabelConfig::default();
        assert_eq!(c.label_names(), vec!["pid", "comm"]);
        assert!(!c.needs_proc());
        c.set(&[OwnerLabel::Exe, OwnerLabel::Unit]);
        assert_eq!(c.label_names(), vec!["pid", "comm", "unit", "exe"]);
        let mut k = LabelConfig {
            process_key: ProcessKeyMode::Unit,
            ..Default::default()
        };
        assert_eq!(k.label_names(), vec!["pid", "comm", "unit"]);
        k.set(&[OwnerLabel::Container]);
        assert_eq!(k.label_names(), vec!["pid", "comm", "unit", "container"]);
        assert!("cgroup".parse::<OwnerLabel>().unwrap_err().contains("unit"));
        assert!("tid".parse::<ProcessKeyMode>().unwrap_err().contains("pid"));
    }
}
