//! The exposition: contract labels, families that vanish at zero, kernel
//! counters mirrored exactly, the fixed histogram buckets, label sets that
//! change on reload.
use std::time::Duration;

use cwatch_common::counter;

use super::metrics::Kernel;
use super::{cardinality::Series, metrics::Metrics, series::Families};
use crate::{
    probe::{KernelCounters, KernelHistogram},
    table::{GroupStats, SockEntry, SocketTable, Summary, tests::record},
    telemetry::Telemetry,
};

/// The walk summary of every socket of `t`.
fn summarize(t: &SocketTable, now_ns: u64, leak_after: Duration) -> Summary {
    t.summarize_where(now_ns, leak_after, |_| true)
}

const S: u64 = 1_000_000_000;

fn kernel(counters: KernelCounters) -> Kernel {
    Kernel {
        counters,
        histogram: None,
    }
}

fn lines_starting(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn gauges_carry_the_contract_labels_and_vanish_at_zero() {
    let m = Metrics::new();
    let tele = Telemetry::new();
    let mut t = SocketTable::new();
    t.insert(SockEntry::from_record(&record(
        1,
        10 * S,
        Some((4242, "leaky \"q\"")),
    )));
    t.insert(SockEntry::from_record(&record(
        2,
        95 * S,
        Some((4242, "leaky \"q\"")),
    )));
    let text = m.render(
        &summarize(&t, 100 * S, Duration::from_secs(60)),
        None,
        &tele,
    );
    assert_eq!(
        lines_starting(&text, "cwatch_process_close_wait_sockets{"),
        vec![r#"cwatch_process_close_wait_sockets{comm="leaky \"q\"",pid="4242"} 2"#]
    );
    assert_eq!(
        lines_starting(&text, "cwatch_process_leaked_sockets{"),
        vec![r#"cwatch_process_leaked_sockets{comm="leaky \"q\"",pid="4242"} 1"#]
    );
    assert_eq!(
        lines_starting(&text, "cwatch_process_oldest_close_wait_seconds{"),
        vec![r#"cwatch_process_oldest_close_wait_seconds{comm="leaky \"q\"",pid="4242"} 90"#]
    );
    assert_eq!(
        lines_starting(&text, "cwatch_peer_close_wait_sockets{"),
        vec![r#"cwatch_peer_close_wait_sockets{peer_addr="127.0.1.1",peer_port="7000"} 2"#]
    );
    assert!(text.contains(&format!(
        "cwatch_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    t.remove(1);
    t.remove(2);
    let text = m.render(
        &summarize(&t, 100 * S, Duration::from_secs(60)),
        None,
        &tele,
    );
    for family in [
        "cwatch_process_close_wait_sockets{",
        "cwatch_process_leaked_sockets{",
        "cwatch_process_oldest_close_wait_seconds{",
        "cwatch_peer_close_wait_sockets{",
        "cwatch_peer_leaked_sockets{",
        "cwatch_peer_oldest_close_wait_seconds{",
    ] {
        assert!(
            lines_starting(&text, family).is_empty(),
            "{family} left behind:\n{text}"
        );
    }
}

#[test]
fn unattributed_sockets_count_under_unknown() {
    let m = Metrics::new();
    let tele = Telemetry::new();
    let mut t = SocketTable::new();
    t.insert(SockEntry::from_record(&record(3, S, None)));
    let text = m.render(&summarize(&t, 2 * S, Duration::from_secs(60)), None, &tele);
    assert!(
        text.contains(r#"cwatch_process_close_wait_sockets{comm="[unknown]",pid=""} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cwatch_peer_close_wait_sockets{peer_addr="127.0.1.1",peer_port="*"} 1"#),
        "{text}"
    );
}

#[test]
fn kernel_counters_are_mirrored_exactly() {
    let m = Metrics::new();
    let tele = Telemetry::new();
    let empty = Summary::default();
    let mut k: KernelCounters = [0; counter::LEN as usize];
    k[counter::TRANSITIONS as usize] = 10;
    k[counter::CLOSED as usize] = 4;
    k[counter::RECORDS_FULL as usize] = 1;
    k[counter::OWNERS_FULL as usize] = 2;
    let text = m.render(&empty, Some(&kernel(k)), &tele);
    assert!(
        text.contains("cwatch_close_wait_transitions_total 10\n"),
        "{text}"
    );
    assert!(
        text.contains("cwatch_close_wait_closed_total 4\n"),
        "{text}"
    );
    assert!(text.contains("cwatch_events_lost_total 0\n"), "{text}");
    assert!(
        text.contains("cwatch_kernel_errors_total{kind=\"map_full\"} 3\n"),
        "{text}"
    );
    k[counter::TRANSITIONS as usize] = 25;
    let text = m.render(&empty, Some(&kernel(k)), &tele);
    assert!(
        text.contains("cwatch_close_wait_transitions_total 25\n"),
        "{text}"
    );
    // Rendering again without change must not double count.
    let text = m.render(&empty, Some(&kernel(k)), &tele);
    assert!(
        text.contains("cwatch_close_wait_transitions_total 25\n"),
        "{text}"
    );
}

#[test]
fn the_kernel_histogram_has_the_fixed_buckets() {
    let m = Metrics::new();
    let tele = Telemetry::new();
    let mut h: KernelHistogram = [0; cwatch_common::hist::LEN as usize];
    // 5 ms and 400 s: the buckets of 10 ms and 1800 s.
    h[cwatch_common::hist::bucket(5_000_000) as usize] += 1;
    h[cwatch_common::hist::bucket(400_000_000_000) as usize] += 1;
    h[cwatch_common::hist::SUM as usize] = 400_005_000_000;
    let k = Kernel {
        counters: [0; counter::LEN as usize],
        histogram: Some(h),
    };
    let text = m.render(&Summary::default(), Some(&k), &tele);
    let buckets = lines_starting(&text, "cwatch_close_wait_duration_seconds_bucket");
    let les: Vec<&str> = buckets
        .iter()
        .map(|l| l.split('"').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        les,
        vec![
            "0.001", "0.01", "0.1", "1", "10", "60", "300", "1800", "3600", "21600", "86400",
            "+Inf"
        ]
    );
    assert!(text.contains("cwatch_close_wait_duration_seconds_bucket{le=\"0.001\"} 0\n"));
    assert!(text.contains("cwatch_close_wait_duration_seconds_bucket{le=\"0.01\"} 1\n"));
    assert!(text.contains("cwatch_close_wait_duration_seconds_bucket{le=\"300\"} 1\n"));
    assert!(text.contains("cwatch_close_wait_duration_seconds_bucket{le=\"1800\"} 2\n"));
    assert!(text.contains("cwatch_close_wait_duration_seconds_count 2\n"));
    assert!(text.contains("cwatch_close_wait_duration_seconds_sum 400.005\n"));
    let none = m.render(&Summary::default(), None, &tele);
    assert!(
        none.contains("cwatch_close_wait_duration_seconds_count 0\n"),
        "the family is there before the probes are: {none}"
    );
}

#[test]
fn process_label_set_can_change_between_scrapes() {
    let m = Metrics::new();
    let tele = Telemetry::new();
    let one = |labels: &[&str]| Families {
        process: vec![Series {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            stats: GroupStats {
                sockets: 3,
                leaked: 1,
                oldest: Duration::from_secs(9),
            },
        }],
        ..Default::default()
    };
    let text = m.render_families(
        &one(&["7", "app", "/bin/app"]),
        &["pid", "comm", "exe"],
        None,
        &tele,
    );
    assert!(
        text.contains(r#"cwatch_process_close_wait_sockets{comm="app",exe="/bin/app",pid="7"} 3"#),
        "{text}"
    );
    let text = m.render_families(&one(&["7", "app"]), &["pid", "comm"], None, &tele);
    assert!(
        text.contains(r#"cwatch_process_close_wait_sockets{comm="app",pid="7"} 3"#),
        "{text}"
    );
    assert!(!text.contains("exe="), "{text}");
}
