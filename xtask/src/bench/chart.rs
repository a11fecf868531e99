//! `scale.png`: time to answer "which sockets are in CLOSE_WAIT" against the
//! number of such sockets, log–log, one line per tool; `soak.png`: the
//! soak's resident memory and leak over time. Drawn with plotters' bitmap
//! backend; text uses DejaVu Sans from the Debian package
//! fonts-dejavu-core (installed by `cargo xtask setup`), registered by file
//! so that no system font lookup is involved.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

use cwatch_testkit::soak::Sample;

use super::scale::{Level, Scale};

pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Series = (&'static str, RGBColor, fn(&Level) -> f64);

const SERIES: [Series; 6] = [
    ("cwatch /metrics (p50)", RGBColor(0, 114, 178), |l| {
        l.scrape_ms.median()
    }),
    ("cwatch ls (default view)", RGBColor(86, 180, 233), |l| {
        l.ls_ms.median()
    }),
    ("cwatch ls --all --json", RGBColor(230, 159, 0), |l| {
        l.ls_all_json_ms.median()
    }),
    (
        "ss -tn state close-wait | wc -l",
        RGBColor(0, 158, 115),
        |l| l.ss_wc_ms.median(),
    ),
    ("ss -tnap state close-wait", RGBColor(213, 94, 0), |l| {
        l.ss_tnap_ms.median()
    }),
    (
        "node_exporter tcpstat scrape",
        RGBColor(204, 121, 167),
        |l| l.node_ms.median(),
    ),
];

/// Registers the font once (plotters keeps it for the process).
fn font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let font =
        std::fs::read(FONT).with_context(|| format!("reading {FONT} (fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a usable font"))?;
    let _ = DONE.set(());
    Ok(())
}

pub fn draw(scale: &Scale, path: &Path) -> anyhow::Result<()> {
    font()?;
    let levels = &scale.levels;
    let xs: Vec<f64> = levels.iter().map(|l| l.sockets as f64).collect();
    let ys: Vec<f64> = levels
        .iter()
        .flat_map(|l| SERIES.iter().map(move |(_, _, f)| f(l)))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let (x0, x1) = bounds(&xs);
    let (y0, y1) = bounds(&ys);

    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("drawing: {e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Listing CLOSE_WAIT sockets: time against socket count",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| anyhow!("drawing: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("sockets in CLOSE_WAIT")
        .y_desc("milliseconds (median)")
        .x_label_formatter(&|v| round_label(*v))
        .y_label_formatter(&|v| format!("{v}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("drawing: {e}"))?;
    for (name, color, f) in SERIES {
        let points: Vec<(f64, f64)> = levels
            .iter()
            .map(|l| (l.sockets as f64, f(l)))
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(|e| anyhow!("drawing: {e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| anyhow!("drawing: {e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("drawing: {e}"))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// `soak.png`: RSS (left axis) and the leak and its gauge (right axis)
/// against time.
pub fn draw_soak(samples: &[Sample], path: &Path) -> anyhow::Result<()> {
    font()?;
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing: {e}");
    let t_max = samples.last().map_or(1.0, |s| s.t_s.max(1.0));
    let rss_max = samples.iter().map(|s| s.rss_mib).fold(1.0, f64::max) * 1.2;
    let leak_max = samples
        .iter()
        .map(|s| (s.leak as f64).max(s.close_wait_gauge))
        .fold(1.0, f64::max)
        * 1.2;
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Soak: the daemon's memory while a leak grows",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .right_y_label_area_size(72)
        .build_cartesian_2d(0.0..t_max, 0.0..rss_max)
        .map_err(e)?
        .set_secondary_coord(0.0..t_max, 0.0..leak_max);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("RSS (MiB)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    chart
        .configure_secondary_axes()
        .y_desc("sockets")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    let blue = RGBColor(0, 114, 178);
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t_s, s.rss_mib)),
            blue.stroke_width(3),
        ))
        .map_err(e)?
        .label("daemon RSS (MiB, left)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(3)));
    for (name, color, f) in [
        (
            "leak (sockets, right)",
            RGBColor(213, 94, 0),
            (|s: &Sample| s.leak as f64) as fn(&Sample) -> f64,
        ),
        ("CLOSE_WAIT gauge (right)", RGBColor(0, 158, 115), |s| {
            s.close_wait_gauge
        }),
    ] {
        chart
            .draw_secondary_series(LineSeries::new(
                samples.iter().map(|s| (s.t_s, f(s))),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present()
        .map_err(|err| anyhow!("writing {}: {err}", path.display()))?;
    Ok(())
}

/// A log-scale axis range around `values` (half the smallest, twice the
/// largest), so that a single level still has a range.
fn bounds(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    if !min.is_finite() || max <= 0.0 {
        return (1.0, 10.0);
    }
    (min / 2.0, max * 2.0)
}

/// Log-axis tick labels: only 1, 2 and 5 times a power of ten (the others
/// would overlap).
fn round_label(v: f64) -> String {
    let magnitude = 10f64.powf(v.log10().floor());
    let lead = (v / magnitude).round();
    if [1.0, 2.0, 5.0].contains(&lead) && (v - lead * magnitude).abs() < magnitude * 0.01 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}
