/*!
Include/exclude filters (`--include`, `--exclude`, keys `include`/`exclude`):
which sockets count at all. A socket counts when it matches at least one
include rule (or there are none) and no exclude rule. Filtered sockets are
left out of every per-process and per-peer metric and of the API; the kernel
counters (transitions, closes) stay host-wide.

Rules are `KIND:VALUE`: `port`, `local_port`, `peer_port` (a port or a range
`8000-8100`; `port` matches either end), `cidr`, `local_cidr`, `peer_cidr`
(an address or a network; `cidr` matches either end), `comm` (exact process
name), `unit` (exact systemd unit).
*/
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

use crate::table::SockEntry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Local,
    Peer,
    Either,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterRule {
    Port(End, u16, u16),
    Cidr(End, IpNet),
    Comm(String),
    Unit(String),
}

/// What a rule needs to know about a socket's owner.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnerView<'a> {
    pub comm: Option<&'a str>,
    pub unit: Option<&'a str>,
}

const KINDS: &str =
    "port, local_port, peer_port, cidr, local_cidr, peer_cidr, comm or unit (e.g. peer_port:7000)";

impl FromStr for FilterRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, value) = text
            .split_once(':')
            .ok_or_else(|| format!("expected KIND:VALUE with KIND one of {KINDS}"))?;
        let end = |prefix: &str| match prefix {
            "local_" => End::Local,
            "peer_" => End::Peer,
            _ => End::Either,
        };
        if let Some(prefix) = kind.strip_suffix("port") {
            if !matches!(prefix, "" | "local_" | "peer_") {
                return Err(format!("unknown filter kind {kind:?}; use {KINDS}"));
            }
            let (lo, hi) = value.split_once('-').unwrap_or((value, value));
            let port = |p: &str| {
                p.parse::<u16>()
                    .map_err(|_| format!("{p:?} is not a port (0-65535)"))
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err(format!("port range {value} is backwards"));
            }
            return Ok(FilterRule::Port(end(prefix), lo, hi));
        }
        if let Some(prefix) = kind.strip_suffix("cidr") {
            if !matches!(prefix, "" | "local_" | "peer_") {
                return Err(format!("unknown filter kind {kind:?}; use {KINDS}"));
            }
            let net = match value.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => value
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{value:?} is not an address or network"))?,
            };
            return Ok(FilterRule::Cidr(end(prefix), net.trunc()));
        }
        match kind {
            "comm" if !value.is_empty() => Ok(FilterRule::Comm(value.to_string())),
            "unit" if !value.is_empty() => Ok(FilterRule::Unit(value.to_string())),
            "comm" | "unit" => Err(format!("{kind} needs a name")),
            _ => Err(format!("unknown filter kind {kind:?}; use {KINDS}")),
        }
    }
}

impl fmt::Display for FilterRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = |e: &End| match e {
            End::Local => "local_",
            End::Peer => "peer_",
            End::Either => "",
        };
        match self {
            FilterRule::Port(e, lo, hi) if lo == hi => write!(f, "{}port:{lo}", end(e)),
            FilterRule::Port(e, lo, hi) => write!(f, "{}port:{lo}-{hi}", end(e)),
            FilterRule::Cidr(e, net) => write!(f, "{}cidr:{net}", end(e)),
            FilterRule::Comm(c) => write!(f, "comm:{c}"),
            FilterRule::Unit(u) => write!(f, "unit:{u}"),
        }
    }
}

impl FilterRule {
    pub fn matches(&self, entry: &SockEntry, owner: OwnerView<'_>) -> bool {
        let either = |e: &End, local: bool, peer: bool| match e {
            End::Local => local,
            End::Peer => peer,
            End::Either => local || peer,
        };
        match self {
            FilterRule::Port(e, lo, hi) => {
                let within = |p: u16| (*lo..=*hi).contains(&p);
                either(e, within(entry.local.port()), within(entry.peer.port()))
            }
            FilterRule::Cidr(e, net) => either(
                e,
                net.contains(&entry.local.ip()),
                net.contains(&entry.peer.ip()),
            ),
            FilterRule::Comm(c) => owner.comm == Some(c.as_str()),
            FilterRule::Unit(u) => owner.unit == Some(u.as_str()),
        }
    }

    /// Whether matching needs the owner's systemd unit.
    pub fn needs_unit(&self) -> bool {
        matches!(self, FilterRule::Unit(_))
    }
}

/// The include and exclude rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub include: Vec<FilterRule>,
    pub exclude: Vec<FilterRule>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn needs_unit(&self) -> bool {
        self.include
            .iter()
            .chain(&self.exclude)
            .any(FilterRule::needs_unit)
    }

    /// Whether `entry` counts.
    pub fn keeps(&self, entry: &SockEntry, owner: OwnerView<'_>) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.matches(entry, owner)))
            && !self.exclude.iter().any(|r| r.matches(entry, owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::record;

    fn entry() -> SockEntry {
        // local 127.0.0.1:40000, peer 127.0.1.1:7000, owner 42/leaky
        SockEntry::from_record(&record(1, 0, Some((42, "leaky"))))
    }

    fn rule(text: &str) -> FilterRule {
        text.parse().unwrap()
    }

    #[test]
    fn rules_parse_print_and_match() {
        let e = entry();
        let owner = OwnerView {
            comm: Some("leaky"),
            unit: Some("order.service"),
        };
        for (text, hit) in [
            ("port:7000", true),
            ("port:40000", true),
            ("local_port:7000", false),
            ("peer_port:6990-7010", true),
            ("peer_cidr:127.0.1.0/24", true),
            ("local_cidr:127.0.1.0/24", false),
            ("cidr:127.0.0.1", true),
            ("peer_cidr:::1/128", false),
            ("comm:leaky", true),
            ("comm:other", false),
            ("unit:order.service", true),
        ] {
            let r = rule(text);
            assert_eq!(r.to_string(), text.replace("127.0.0.1", "127.0.0.1/32"));
            assert_eq!(r.matches(&e, owner), hit, "{text}");
        }
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, needle) in [
            ("7000", "KIND:VALUE"),
            ("host:x", "unknown filter kind \"host\""),
            ("peer_port:70000", "not a port"),
            ("port:9-3", "backwards"),
            ("cidr:10.0.0.0/33", "not an address"),
            ("comm:", "needs a name"),
            ("remote_port:1", "unknown filter kind"),
        ] {
            let err = text.parse::<FilterRule>().unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn include_then_exclude() {
        let e = entry();
        let o = OwnerView {
            comm: Some("leaky"),
            unit: None,
        };
        let f = |inc: &[&str], exc: &[&str]| Filters {
            include: inc.iter().map(|t| rule(t)).collect(),
            exclude: exc.iter().map(|t| rule(t)).collect(),
        };
        assert!(f(&[], &[]).keeps(&e, o));
        assert!(f(&["peer_port:7000", "comm:x"], &[]).keeps(&e, o));
        assert!(!f(&["comm:x"], &[]).keeps(&e, o));
        assert!(!f(&["peer_port:7000"], &["comm:leaky"]).keeps(&e, o));
        assert!(
            f(&[], &["unit:a.service"]).keeps(&e, o),
            "no unit known: no match"
        );
        assert!(f(&[], &["unit:a.service"]).needs_unit());
    }
}
