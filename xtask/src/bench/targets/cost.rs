//! The cost targets: churn overhead, the kernel programs, a quiet host.
use super::Rows;
use crate::bench::{
    cost::{self, ShapeCost},
    overhead::Paired,
    report::Results,
};

pub(super) fn churn(r: &Results, t: &mut Rows) {
    let o = r.overhead.as_ref();
    let c = o.map(|o| &o.churn);
    // What empty programs on the same tracepoints cost in the same rounds:
    // the floor any program there pays on this machine.
    let beside = |p: Option<&Paired>, what: &str| {
        p.filter(|e| !e.cpu_ratios.is_empty())
            .map_or(String::new(), |e| {
                format!(
                    "; {what} {:+.2} % CPU, {:.2} % loss",
                    e.cpu_extra_pct(),
                    e.loss_pct()
                )
            })
    };
    let floor = beside(o.map(|o| &o.churn_empty), "empty programs")
        + &beside(o.map(|o| &o.churn_floor), "cwatch-floor");
    let cpu = |p: &Paired, v: f64| {
        (
            v,
            format!(
                "{v:+.2} % (CPU ratio {:.3}–{:.3}; {:.0} → {:.0} ns{floor})",
                p.cpu_ratios.min(),
                p.cpu_ratios.max(),
                p.cpu_without.median(),
                p.cpu_with.median()
            ),
            Some(v <= 3.0),
        )
    };
    t.push(
        "churn.cpu_extra_pct",
        "churn: CPU per connection with cwatch ≤ +3 % (the churn's own CPU)",
        "%",
        c.map(|p| cpu(p, p.cpu_extra_pct())),
    );
    t.push(
        "churn.host_cpu_extra_pct",
        "churn: CPU per connection with cwatch ≤ +3 % (the daemon's CPU included)",
        "%",
        c.map(|p| {
            let v = p.host_cpu_extra_pct();
            let d = &p.daemon_cpu_pct;
            (
                v,
                format!(
                    "{v:+.2} % (the daemon: {:.2} % of a core, {:.2}–{:.2} %)",
                    d.median(),
                    d.min(),
                    d.max()
                ),
                Some(v <= 3.0),
            )
        }),
    );
    t.push(
        "churn.loss_pct",
        "churn: connection-rate loss with cwatch ≤ 3 %",
        "%",
        c.map(|p| {
            let v = p.loss_pct();
            (
                v,
                format!(
                    "{v:.2} % (ratio {:.3}–{:.3})",
                    p.ratios.min(),
                    p.ratios.max()
                ),
                Some(v <= 3.0),
            )
        }),
    );
    t.push(
        "churn.vs_one_liner",
        "churn: cwatch costs less than the bpftrace one-liner (rate loss and CPU per connection; figure: the one-liner's extra CPU)",
        "%",
        o.map(|o| {
            let (cw, bt) = (&o.churn, &o.churn_bpftrace);
            (
                bt.cpu_extra_pct(),
                format!(
                    "cwatch {:.2} % loss, {:+.2} % CPU; the one-liner {:.2} % loss, {:+.2} % CPU",
                    cw.loss_pct(),
                    cw.cpu_extra_pct(),
                    bt.loss_pct(),
                    bt.cpu_extra_pct()
                ),
                Some(
                    cw.loss_pct() < bt.loss_pct() && cw.cpu_extra_pct() < bt.cpu_extra_pct(),
                ),
            )
        }),
    );
    t.push(
        "getppid.loss_pct",
        "getppid() loop ≤ 2 % loss with cwatch (rate, and CPU per call)",
        "%",
        o.map(|o| {
            let p = &o.getppid;
            (
                p.loss_pct(),
                format!(
                    "{:.2} % (ratio {:.3}–{:.3}), CPU {:+.2} %",
                    p.loss_pct(),
                    p.ratios.min(),
                    p.ratios.max(),
                    p.cpu_extra_pct()
                ),
                Some(p.loss_pct() <= 2.0 && p.cpu_extra_pct() <= 2.0),
            )
        }),
    );
}

pub(super) fn kernel(r: &Results, t: &mut Rows) {
    let shape = |name: &str| -> Option<&ShapeCost> {
        r.cost.as_ref()?.iter().find(|s| s.shape.name == name)
    };
    t.push(
        "kernel.ns_per_conn",
        "kernel: all cwatch programs together ≤ 700 ns per connection (default churn)",
        "ns",
        shape("client").map(|s| {
            let v = s.ns_per_conn(cost::CWATCH);
            (
                v,
                format!(
                    "{v:.0} ns (the one-liner {:.0}, the empty programs {:.0}, cwatch-floor {:.0})",
                    s.ns_per_conn(cost::ONE_LINER),
                    s.ns_per_conn(cost::EMPTY_OWNER),
                    s.ns_per_conn(cost::FLOOR_OWNER)
                ),
                Some(v <= 700.0),
            )
        }),
    );
    t.push(
        "kernel.reset_above_empty_ns",
        "kernel: transitions without CLOSE_WAIT or a watched process (`--close reset` churn) ≤ 15 ns per run above the empty program",
        "ns",
        shape("reset").and_then(|s| {
            let v = s.above_empty("inet_sock_set_state")?;
            let destroy = s
                .above_empty("tcp_destroy_sock")
                .map_or("no tcp_destroy_sock figure".into(), |d| {
                    format!("tcp_destroy_sock {d:+.1} ns")
                });
            Some((
                v,
                format!("inet_sock_set_state {v:+.1} ns ({destroy}, not judged)"),
                Some(v <= 15.0),
            ))
        }),
    );
}

pub(super) fn quiet(r: &Results, t: &mut Rows) {
    t.push(
        "quiet.cpu_pct",
        "quiet host: the daemon's CPU between scrapes ≤ 0.05 % of a core",
        "%",
        r.quiet.as_ref().map(|q| {
            (
                q.cpu_pct,
                format!(
                    "{:.3} % over {:.0} s, RSS {:.1} MiB ({} CLOSE_WAIT transitions on the host meanwhile)",
                    q.cpu_pct, q.window_s, q.rss_mib, q.host_transitions
                ),
                Some(q.cpu_pct <= 0.05),
            )
        }),
    );
}
