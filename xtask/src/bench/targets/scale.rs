//! The targets of scale (judged at 1,000,000 sockets), attribution,
//! detection latency and the soak.
use super::Rows;
use crate::bench::{attribution::Attribution, report::Results, scale::Level, stats::Samples};

const MILLION: usize = 1_000_000;

/// `f` of the largest level: judged by `ok` only at 1M sockets.
fn at_top(
    r: &Results,
    f: impl Fn(&Level) -> (f64, String),
    ok: impl Fn(f64) -> bool,
) -> Option<(f64, String, Option<bool>)> {
    let top = r.scale.as_ref()?.levels.last()?;
    let (v, shown) = f(top);
    if top.sockets >= MILLION {
        Some((v, shown, Some(ok(v))))
    } else {
        Some((
            v,
            format!("{shown} at {} sockets (judged at 1M)", top.sockets),
            None,
        ))
    }
}

pub(super) fn scale(r: &Results, t: &mut Rows) {
    t.push(
        "scale.rss_mib",
        "1M sockets: daemon RSS ≤ 100 MiB",
        "MiB",
        at_top(
            r,
            |l| {
                (
                    l.settled_rss_mib,
                    format!(
                        "{:.1} MiB settled ({:.1} right after all counted, {:.1} after ls; peak {:.0})",
                        l.settled_rss_mib, l.rss_mib, l.rss_after_ls_mib, l.peak_rss_mib
                    ),
                )
            },
            |v| v <= 100.0,
        ),
    );
    t.push(
        "scale.idle_cpu_pct",
        "1M sockets: idle CPU ≤ 1 % of a core, reconciliation included",
        "%",
        at_top(
            r,
            |l| {
                let pct = l.cpu_s_per_hour / 36.0;
                (pct, format!("{pct:.3} % ({:.1} CPU-s/h)", l.cpu_s_per_hour))
            },
            |v| v <= 1.0,
        ),
    );
    t.push(
        "scale.ready_s",
        "1M sockets: ready ≤ 5 s after start with them already there",
        "s",
        at_top(
            r,
            |l| (l.ready_s, format!("{:.2} s", l.ready_s)),
            |v| v <= 5.0,
        ),
    );
    t.push(
        "scale.metrics_p99_ms",
        "1M sockets: /metrics p99 ≤ 20 ms",
        "ms",
        at_top(
            r,
            |l| {
                let p99 = l.scrape_ms.percentile(99.0);
                (
                    p99,
                    format!("{p99:.1} ms (p50 {:.1})", l.scrape_ms.median()),
                )
            },
            |v| v <= 20.0,
        ),
    );
    t.push(
        "scale.ls_ms",
        "1M sockets: `cwatch ls` (default view) ≤ 1 s",
        "ms",
        at_top(
            r,
            |l| (l.ls_ms.median(), format!("{:.0} ms", l.ls_ms.median())),
            |v| v <= 1000.0,
        ),
    );
    t.push(
        "scale.ls_all_json_vs_ss",
        "1M sockets: `cwatch ls --all --json > /dev/null` no slower than `ss -tn state close-wait | wc -l` (figure: ls / ss)",
        "ratio",
        at_top(
            r,
            |l| {
                let (ls, ss) = (l.ls_all_json_ms.median(), l.ss_wc_ms.median());
                (ls / ss, format!("{:.2}× ({ls:.0} ms vs {ss:.0} ms)", ls / ss))
            },
            |v| v <= 1.0,
        ),
    );
    let at_200k = r
        .scale
        .as_ref()
        .and_then(|s| s.levels.iter().find(|l| l.sockets == 200_000));
    for (id, what, get) in [
        (
            "scale.metrics_vs_node_200k",
            "node_exporter tcpstat",
            (|l: &Level| l.node_ms.median()) as fn(&Level) -> f64,
        ),
        ("scale.metrics_vs_ss_tnap_200k", "`ss -tnap`", |l| {
            l.ss_tnap_ms.median()
        }),
    ] {
        t.push(
            id,
            &format!("200k sockets: /metrics ≥ 10× faster than {what}"),
            "×",
            at_200k.map(|l| {
                let x = get(l) / l.scrape_ms.median();
                (
                    x,
                    format!(
                        "{x:.0}× ({:.1} ms vs {:.0} ms)",
                        l.scrape_ms.median(),
                        get(l)
                    ),
                    Some(x >= 10.0),
                )
            }),
        );
    }
}

pub(super) fn attribution(r: &Results, t: &mut Rows) {
    let a = r.attribution.as_ref();
    let scope = |a: &Attribution| format!("{} sockets in {} processes", a.sockets, a.processes);
    let full = |a: &Attribution| a.processes >= 2_000;
    t.push(
        "attribution.pid_p99_s",
        "owner pid known ≤ 1 s p99 (50k sockets across 2,000 processes; figure: the API's upper bound)",
        "s",
        a.map(|a| {
            let v = a.pid_upper_s.percentile(99.0);
            let missing = a.pid_missing;
            (
                v,
                format!(
                    "≤ {v:.2} s, ≥ {:.2} s ({}; {missing} never known)",
                    a.pid_lower_s.percentile(99.0),
                    scope(a)
                ),
                full(a).then_some(v <= 1.0 && missing == 0),
            )
        }),
    );
    t.push(
        "attribution.fd_p99_s",
        "the fd within 1 s too, p99 (figure: `cwatch_attribution_seconds`)",
        "s",
        a.map(|a| {
            let v = a.hist_p99_s;
            let share = a.within_1s / a.observed * 100.0;
            (
                v,
                format!(
                    "{v:.2} s; {share:.1} % of {} observations ≤ 1 s; the API's upper bound {:.2} s ({})",
                    a.observed,
                    a.fd_upper_s.percentile(99.0),
                    scope(a)
                ),
                full(a).then_some(share >= 99.0 && a.fd_missing == 0),
            )
        }),
    );
}

pub(super) fn latency(r: &Results, t: &mut Rows) {
    let l = r.latency.as_ref();
    let row = |s: &Samples| {
        (
            s.max(),
            format!("{:.1} ms max, {:.1} ms median", s.max(), s.median()),
            Some(s.max() <= 1000.0),
        )
    };
    t.push(
        "latency.max_ms",
        "transition → the owner's gauge (`cwatch_process_close_wait_sockets{pid}`) ≤ 1 s (the slowest trial)",
        "ms",
        l.filter(|l| !l.owner.is_empty()).map(|l| row(&l.owner)),
    );
    t.push(
        "latency.peer_max_ms",
        "transition → the peer's gauge (`cwatch_peer_close_wait_sockets`) ≤ 1 s (the slowest trial)",
        "ms",
        l.filter(|l| !l.peer.is_empty()).map(|l| row(&l.peer)),
    );
}

pub(super) fn soak(r: &Results, t: &mut Rows) {
    let s = r.soak.as_ref();
    t.push(
        "soak.rss_growth_mib",
        "soak: RSS flat (≤ 2 MiB growth from the end of the warm-up to the end)",
        "MiB",
        s.map(|(secs, o)| {
            let g = o.rss_growth_mib();
            (
                g,
                format!("{g:+.2} MiB over {secs} s (max {:.1} MiB)", o.rss_max_mib()),
                Some(g <= 2.0),
            )
        }),
    );
    t.push(
        "soak.leaked_vs_leak",
        "soak: the leaked gauge equals the leak at the end (figure: gauge − leak)",
        "sockets",
        s.map(|(_, o)| {
            let d = o.leaked_gauge - o.leak as f64;
            (
                d,
                format!(
                    "gauge {} for a leak of {} (ss: {})",
                    o.leaked_gauge, o.leak, o.leak_ss
                ),
                Some(d == 0.0 && o.leak_ss == o.leak),
            )
        }),
    );
    t.push(
        "soak.corrections",
        "soak: no correction drift (`cwatch_reconcile_corrections_total` unchanged)",
        "corrections",
        s.map(|(_, o)| {
            let d = o.corrections_end - o.corrections_start;
            (
                d,
                format!("{d} over {} full passes", o.full_passes),
                Some(d == 0.0 && o.full_passes >= 1.0),
            )
        }),
    );
}
