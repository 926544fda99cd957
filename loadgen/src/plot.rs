//! The picture of a run: offered vs achieved rate, latency percentiles, and the replica count
//! of the watched Deployment, over time. Drawn as SVG with plotters (no fonts or native
//! libraries needed); `.html` wraps the SVG in a page, `.png` rasterises it with resvg using the
//! system's fonts for the labels.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::Report;

/// Checks that `path` names a format we can draw, before the run starts.
pub fn check_format(path: &Path) -> anyhow::Result<()> {
    match extension(path).as_deref() {
        Some("svg" | "html" | "png") => Ok(()),
        _ => anyhow::bail!("--plot {}: use a .png, .svg or .html file", path.display()),
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
    match extension(path).as_deref() {
        Some("png") => write_png(&svg, path),
        Some("html") => {
            let page = format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>loadgen: {}</title></head>\n<body>\n<h1>{} against {}</h1>\n{svg}\n</body></html>\n",
                report.target, report.mode, report.target
            );
            std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))
        }
        _ => std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// Rasterises the SVG on a white background. Labels need a system font (any sans-serif, e.g.
/// Debian's fonts-dejavu-core); without one the lines are drawn and the text is left out.
fn write_png(svg: &str, path: &Path) -> anyhow::Result<()> {
    use resvg::{tiny_skia, usvg};
    let mut options = usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    // The chart asks for the generic `sans-serif`; map it to a sans face this system has
    // (fontdb's default, Arial, is rarely installed on Linux).
    let sans = fonts
        .faces()
        .flat_map(|face| face.families.iter().map(|(name, _)| name.clone()))
        .filter(|name| name.contains("Sans") && !name.contains("Mono"))
        .min_by_key(String::len);
    match sans {
        Some(family) => fonts.set_sans_serif_family(family),
        None => tracing::warn!(
            "no sans-serif system font found: the PNG will have no labels (install fonts-dejavu-core, or use .svg)"
        ),
    }
    let tree = usvg::Tree::from_str(svg, &options).context("the plot SVG does not parse")?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).context("plot size is zero")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    // Opaque background, so premultiplied RGBA equals straight RGBA.
    let image = image::RgbaImage::from_raw(size.width(), size.height(), pixmap.take())
        .context("pixmap size mismatch")?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", path.display()))
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
