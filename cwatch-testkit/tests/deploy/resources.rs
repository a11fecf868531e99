//! The DaemonSet's resource requests and limits against what the bench
//! measured (bench/RESULTS.md, section "Scale", written by `cargo xtask bench`):
//! the memory limit holds the largest RSS measured, the peak (VmHWM) where
//! the table has it (an OOM kill would hide the very leak being counted,
//! and a restart at a million sockets passes through start-up's peak), the
//! memory request the RSS at the smallest
//! size, the CPU request the idle CPU at the largest size, and no request
//! exceeds its limit. A new bench run that outgrows the manifest fails here.
use crate::{common::read_repo_file, kubernetes::as_json};

/// One row of the bench's scale table.
#[derive(Debug, PartialEq)]
struct ScaleRow {
    sockets: u64,
    /// The larger of the RSS before and after a `cwatch ls`.
    rss_mib: f64,
    /// The most resident memory the daemon had (VmHWM), where measured.
    peak_mib: Option<f64>,
    idle_cpu_s_per_hour: f64,
}

/// The rows of the table under "## N. Scale" (its number depends on the
/// sections run), found by its column titles.
fn scale_rows(results: &str) -> Vec<ScaleRow> {
    let section = results
        .split("\n## ")
        .find(|s| {
            s.split_once(". ").is_some_and(|(n, title)| {
                n.chars().all(|c| c.is_ascii_digit()) && title.starts_with("Scale\n")
            })
        })
        .expect("bench/RESULTS.md has no section \"N. Scale\"");
    let mut lines = section.lines().filter(|l| l.starts_with('|'));
    let cells = |line: &str| -> Vec<String> {
        line.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let header = cells(lines.next().expect("no table in section 3"));
    let column = |title: &str| {
        header
            .iter()
            .position(|h| h == title)
            .unwrap_or_else(|| panic!("no column {title:?} in {header:?}"))
    };
    let (sockets, rss, rss_ls, idle) = (
        column("sockets"),
        column("RSS (MiB)"),
        column("RSS after ls (MiB)"),
        column("idle CPU-s/h"),
    );
    let peak = header.iter().position(|h| h == "peak RSS (MiB)");
    let number = |row: &[String], i: usize| -> f64 {
        row[i]
            .parse()
            .unwrap_or_else(|e| panic!("{:?} in {row:?}: {e}", row[i]))
    };
    lines
        .skip(1) // the |---| line
        .map(|line| {
            let row = cells(line);
            ScaleRow {
                sockets: number(&row, sockets) as u64,
                // `cwatch ls` is not run at every size: then the RSS alone.
                rss_mib: row[rss_ls]
                    .parse::<f64>()
                    .map_or(number(&row, rss), |after| after.max(number(&row, rss))),
                peak_mib: peak.map(|i| number(&row, i)),
                idle_cpu_s_per_hour: number(&row, idle),
            }
        })
        .collect()
}

/// A Kubernetes memory quantity in MiB (`64Mi`, `1Gi`, `512Ki`, bytes).
fn mib(quantity: &str) -> f64 {
    let (number, scale) = [("Gi", 1024.0), ("Mi", 1.0), ("Ki", 1.0 / 1024.0)]
        .iter()
        .find_map(|(suffix, scale)| quantity.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((quantity, 1.0 / (1024.0 * 1024.0)));
    number
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("memory quantity {quantity:?}: {e}"))
        * scale
}

/// A Kubernetes CPU quantity in millicores (`30m`, `1`, `0.5`).
fn millicores(quantity: &str) -> f64 {
    match quantity.strip_suffix('m') {
        Some(m) => m.parse::<f64>(),
        None => quantity.parse::<f64>().map(|cores| cores * 1000.0),
    }
    .unwrap_or_else(|e| panic!("CPU quantity {quantity:?}: {e}"))
}

#[test]
fn quantities_and_the_scale_table_parse() {
    assert_eq!(mib("64Mi"), 64.0);
    assert_eq!(mib("1Gi"), 1024.0);
    assert_eq!(mib("1048576"), 1.0);
    assert_eq!(millicores("30m"), 30.0);
    assert_eq!(millicores("1"), 1000.0);
    let fixture = "# x\n\n## 3. Scale\n\ntext\n\n\
        | sockets | RSS (MiB) | RSS after ls (MiB) | peak RSS (MiB) | idle CPU-s/h |\n|---|---|---|---|---|\n\
        | 10 | 28.3 | 41.5 | 45.0 | 12.6 |\n| 20 | 498.0 | not run | 610.2 | 107.0 |\n\n## 4. Next\n| a |\n";
    assert_eq!(
        scale_rows(fixture),
        [
            ScaleRow {
                sockets: 10,
                rss_mib: 41.5,
                peak_mib: Some(45.0),
                idle_cpu_s_per_hour: 12.6
            },
            ScaleRow {
                sockets: 20,
                rss_mib: 498.0,
                peak_mib: Some(610.2),
                idle_cpu_s_per_hour: 107.0
            }
        ]
    );
}

#[test]
fn daemonset_resources_cover_what_the_bench_measured() {
    let rows = scale_rows(&read_repo_file("bench/RESULTS.md"));
    let smallest = rows
        .iter()
        .min_by_key(|r| r.sockets)
        .expect("no scale rows");
    let largest = rows
        .iter()
        .max_by_key(|r| r.sockets)
        .expect("no scale rows");
    let resources =
        &as_json("daemonset.yaml")["spec"]["template"]["spec"]["containers"][0]["resources"];
    let get = |kind: &str, what: &str| {
        resources[kind][what]
            .as_str()
            .unwrap_or_else(|| panic!("no resources.{kind}.{what} in {resources}"))
            .to_string()
    };
    let (req_mem, lim_mem) = (
        mib(&get("requests", "memory")),
        mib(&get("limits", "memory")),
    );
    let (req_cpu, lim_cpu) = (
        millicores(&get("requests", "cpu")),
        millicores(&get("limits", "cpu")),
    );
    let peak = rows
        .iter()
        .map(|r| r.rss_mib.max(r.peak_mib.unwrap_or(0.0)))
        .fold(0.0, f64::max);
    assert!(
        lim_mem >= peak,
        "memory limit {lim_mem} MiB is below the bench's {peak} MiB"
    );
    assert!(
        req_mem >= smallest.rss_mib && req_mem <= lim_mem,
        "memory request {req_mem} MiB: the bench used {} MiB at {} sockets, limit {lim_mem}",
        smallest.rss_mib,
        smallest.sockets
    );
    let idle = largest.idle_cpu_s_per_hour / 3600.0 * 1000.0;
    assert!(
        req_cpu >= idle && req_cpu <= lim_cpu,
        "CPU request {req_cpu}m: idle at {} sockets is {idle:.1}m, limit {lim_cpu}m",
        largest.sockets
    );
}
