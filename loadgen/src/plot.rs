//! The picture of a run: offered vs achieved rate, latency percentiles, and the replica count
//! of the watched Deployment, over time. SVG (or SVG inside a small HTML page), drawn with
//! plotters; no fonts or native libraries needed.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::Report;

/// Checks that `path` names a format we can draw, before the run starts.
pub fn check_format(path: &Path) -> anyhow::Result<()> {
    match extension(path).as_deref() {
        Some("svg" | "html") => Ok(()),
        _ => anyhow::bail!("--plot {}: use a .svg or .html file", path.display()),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Draws the report's series into `path` (`.svg` or `.html`).
pub fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    check_format(path)?;
    let svg = draw(report).map_err(|e| anyhow::anyhow!("drawing the plot failed: {e}"))?;
    let content = if extension(path).as_deref() == Some("html") {
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>loadgen: {}</title></head>\n<body>\n<h1>{} against {}</h1>\n{svg}\n</body></html>\n",
            report.target, report.mode, report.target
        )
    } else {
        svg
    };
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// One named, coloured line of (seconds, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn draw(report: &Report) -> Result<String, Box<dyn std::error::Error>> {
    let has_replicas = report.series.iter().any(|r| r.replicas.is_some());
    let panels = if has_replicas { 3 } else { 2 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 300 * panels)).into_drawing_area();
        root.fill(&WHITE)?;
        let areas = root.split_evenly((panels as usize, 1));
        let end = report.series.len().max(1) as f64;
        let x = |r: &crate::report::Row| r.measured.second as f64 + 0.5;

        let rate_max = report
            .series
            .iter()
            .flat_map(|r| {
                [
                    r.offered.unwrap_or(0.0),
                    r.measured.completed as f64,
                    r.measured.sent as f64,
                ]
            })
            .fold(1.0, f64::max)
            * 1.1;
        let mut lines: Vec<Line<'_>> = Vec::new();
        if report.series.iter().any(|r| r.offered.is_some()) {
            lines.push((
                "offered (target)",
                BLUE,
                report
                    .series
                    .iter()
                    .map(|r| (x(r), r.offered.unwrap_or(0.0)))
                    .collect(),
            ));
        }
        lines.push((
            "achieved (2xx responses/s)",
            GREEN,
            report
                .series
                .iter()
                .map(|r| (x(r), r.measured.completed as f64))
                .collect(),
        ));
        lines.push((
            "errors/s",
            RED,
            report
                .series
                .iter()
                .map(|r| (x(r), r.measured.errors as f64))
                .collect(),
        ));
        panel(
            &areas[0],
            "Request rate",
            "requests/s",
            end,
            rate_max,
            lines,
        )?;

        let latency_max = report
            .series
            .iter()
            .map(|r| r.measured.p99_ms)
            .fold(1.0, f64::max)
            * 1.1;
        panel(
            &areas[1],
            if report.coordinated_omission_free {
                "Latency from intended send time"
            } else {
                "Latency (closed loop)"
            },
            "ms",
            end,
            latency_max,
            vec![
                (
                    "p50",
                    BLUE,
                    report
                        .series
                        .iter()
                        .map(|r| (x(r), r.measured.p50_ms))
                        .collect(),
                ),
                (
                    "p99",
                    RED,
                    report
                        .series
                        .iter()
                        .map(|r| (x(r), r.measured.p99_ms))
                        .collect(),
                ),
            ],
        )?;

        if has_replicas {
            let replicas_max = report
                .series
                .iter()
                .filter_map(|r| r.replicas)
                .max()
                .unwrap_or(1) as f64
                + 1.0;
            let points = report
                .series
                .iter()
                .filter_map(|r| r.replicas.map(|n| (x(r), f64::from(n))))
                .collect();
            panel(
                &areas[2],
                "Ready replicas (HPA)",
                "pods",
                end,
                replicas_max,
                vec![("replicas", BLACK, points)],
            )?;
        }
        root.present()?;
    }
    Ok(svg)
}

fn panel(
    area: &Panel<'_>,
    title: &str,
    unit: &str,
    x_end: f64,
    y_end: f64,
    lines: Vec<Line<'_>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..y_end)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(unit)
        .draw()?;
    for (label, color, points) in lines {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
