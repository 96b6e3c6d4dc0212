//! Drawing charts as SVG strings with plotters: time series with shaded windows, bars
//! (grouped, with tolerance bands), and an event timeline. Every chart has a title, axis
//! descriptions with units and a legend beside the plot (never over the data), in Paul
//! Tol's colour-blind-safe "muted" palette.
//!
//! The SVG is annotated for tests and tools: the root carries `data-plot` (two data
//! points and their pixels, so pixel coordinates map back to data), each series' polyline
//! `data-series`, each shaded window `data-window`, each bar `data-bar`. What to draw is
//! decided elsewhere ([`crate::analyze`]); nothing here reads results.

use std::fmt::Write as _;
use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Paul Tol's muted qualitative palette (colour-blind safe), darkest first.
pub const PALETTE: [RGBColor; 9] = [
    RGBColor(0x33, 0x22, 0x88),
    RGBColor(0xCC, 0x66, 0x77),
    RGBColor(0x11, 0x77, 0x33),
    RGBColor(0x88, 0x22, 0x55),
    RGBColor(0x44, 0xAA, 0x99),
    RGBColor(0x99, 0x99, 0x33),
    RGBColor(0xAA, 0x44, 0x99),
    RGBColor(0x88, 0xCC, 0xEE),
    RGBColor(0xDD, 0xCC, 0x77),
];
/// For aggregates ("the other 990 instances") and references.
pub const GREY: RGBColor = RGBColor(0x77, 0x77, 0x77);
/// Shading of fault windows (Tol vibrant orange).
pub const FAULT_SHADE: RGBColor = RGBColor(0xEE, 0x77, 0x33);
/// Shading of ejection windows (Tol vibrant blue).
pub const EJECTION_SHADE: RGBColor = RGBColor(0x00, 0x77, 0xBB);
/// Shading of other windows.
pub const OTHER_SHADE: RGBColor = RGBColor(0xBB, 0xBB, 0xBB);

pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 380;
const LEGEND_WIDTH: u32 = 230;
const FONT: &str = "sans-serif";
// plotters' SVG backend writes font-size = size / 1.24: 24 → 19 px titles, 16 → 13 px labels.
/// Legend entries longer than this are cut with `…`.
const LEGEND_CHARS: usize = 30;

pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Drawing into a string cannot fail: the only errors plotters can report here are I/O.
fn drawn<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("drawing into a string cannot fail")
}

/// Axes, titles and tick formats of a chart.
pub struct Frame<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub x: Range<f64>,
    pub y: Range<f64>,
    pub x_fmt: &'a dyn Fn(&f64) -> String,
    pub y_fmt: &'a dyn Fn(&f64) -> String,
    pub x_labels: usize,
    pub y_labels: usize,
    /// Pixels for the y tick labels.
    pub y_label_width: u32,
}

/// Plain numbers, without a trailing `.0`.
pub fn num(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub colour: RGBColor,
    pub width: u32,
}

/// A shaded span of the x axis, tagged with a short label.
pub struct Shade {
    pub from: f64,
    pub to: f64,
    pub tag: String,
    pub colour: RGBColor,
}

/// What the legend lists for shades: one entry per kind of window.
pub struct ShadeKey {
    pub name: String,
    pub colour: RGBColor,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn legend(area: &Area<'_>, lines: &[(String, RGBColor, u32)], shades: &[ShadeKey]) {
    let style = TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = 50;
    for (name, c, w) in lines {
        drawn(area.draw(&PathElement::new(vec![(8, y), (36, y)], c.stroke_width((*w).max(3)))));
        drawn(area.draw(&Text::new(cut(name, LEGEND_CHARS), (44, y), style.clone())));
        y += 22;
    }
    for s in shades {
        drawn(area.draw(&Rectangle::new([(8, y - 7), (36, y + 7)], s.colour.mix(0.3).filled())));
        drawn(area.draw(&Text::new(cut(&s.name, LEGEND_CHARS), (44, y), style.clone())));
        y += 22;
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).collect::<String>() + "…" }
}

/// Inserts `attr` into the next `<element` tag at or after `from` whose attributes contain
/// `needle`; returns the position after it (or `from` when there is none).
fn annotate(svg: &mut String, from: usize, element: &str, needle: &str, attr: &str) -> usize {
    let open = format!("<{element} ");
    let mut at = from;
    while let Some(i) = svg[at..].find(&open).map(|i| i + at) {
        let end = svg[i..].find('>').map_or(svg.len(), |e| e + i);
        if svg[i..end].contains(needle) {
            svg.insert_str(i + open.len(), &format!("{attr} "));
            return end + attr.len() + 1;
        }
        at = end;
    }
    from
}

/// The `data-plot` attribute: data point `a` at pixel `pa`, `b` at `pb`.
fn plot_attr(a: (f64, f64), pa: (i32, i32), b: (f64, f64), pb: (i32, i32)) -> String {
    format!("data-plot=\"{} {} {} {} {} {} {} {}\"", pa.0, pa.1, pb.0, pb.1, a.0, a.1, b.0, b.1)
}

fn annotate_root(svg: &mut String, attr: &str) {
    if let Some(i) = svg.find("<svg ") {
        svg.insert_str(i + 5, &format!("{attr} "));
    }
}

/// A line chart: shaded windows (their tags in up to three rows above the data), then the lines.
pub fn lines(frame: &Frame<'_>, lines: &[Line], shades: &[Shade], keys: &[ShadeKey]) -> String {
    let mut svg = String::new();
    let calibration;
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        drawn(root.fill(&WHITE));
        let (left, right) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = drawn(
            ChartBuilder::on(&left)
                .caption(frame.title, (FONT, 24))
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(frame.y_label_width)
                .build_cartesian_2d(frame.x.clone(), frame.y.clone()),
        );
        drawn(
            chart
                .configure_mesh()
                .x_desc(frame.x_desc)
                .y_desc(frame.y_desc)
                .x_labels(frame.x_labels)
                .y_labels(frame.y_labels)
                .x_label_formatter(frame.x_fmt)
                .y_label_formatter(frame.y_fmt)
                .label_style((FONT, 16))
                .axis_desc_style((FONT, 17))
                .bold_line_style(RGBColor(0xDD, 0xDD, 0xDD))
                .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
                .draw(),
        );
        for s in shades {
            let to = s.to.max(s.from);
            drawn(chart.draw_series(std::iter::once(Rectangle::new(
                [(s.from, frame.y.start), (to, frame.y.end)],
                s.colour.mix(if s.colour == FAULT_SHADE { 0.12 } else { 0.25 }).filled(),
            ))));
        }
        let area = chart.plotting_area().strip_coord_spec();
        let (px, _) = chart.plotting_area().get_pixel_range();
        let tag_style = TextStyle::from((FONT, 15).into_font()).color(&BLACK);
        let mut row_end = [i32::MIN; 3];
        for s in shades {
            let x = chart.backend_coord(&(s.from, frame.y.end)).0 - px.start + 2;
            let width = 7 * s.tag.len() as i32 + 4;
            if let Some(row) = row_end.iter().position(|&e| x >= e) {
                row_end[row] = x + width;
                drawn(area.draw(&Text::new(s.tag.clone(), (x, 3 + 14 * row as i32), tag_style.clone())));
            }
        }
        for l in lines.iter().filter(|l| l.points.len() > 1) {
            drawn(chart.draw_series(LineSeries::new(l.points.iter().copied(), l.colour.stroke_width(l.width))));
        }
        let a = (frame.x.start, frame.y.start);
        let b = (frame.x.end, frame.y.end);
        calibration = plot_attr(a, chart.backend_coord(&a), b, chart.backend_coord(&b));
        let entries: Vec<(String, RGBColor, u32)> = lines.iter().map(|l| (l.name.clone(), l.colour, l.width)).collect();
        legend(&right, &entries, keys);
        drawn(root.present());
    }
    annotate_root(&mut svg, &calibration);
    let mut at = 0;
    for s in shades {
        at = annotate(
            &mut svg,
            at,
            "rect",
            &format!("fill=\"{}\"", hex(s.colour)),
            &format!("data-window=\"{}\"", esc(&s.tag)),
        );
    }
    for l in lines.iter().filter(|l| l.points.len() > 1) {
        at = annotate(
            &mut svg,
            at,
            "polyline",
            &format!("stroke=\"{}\"", hex(l.colour)),
            &format!("data-series=\"{}\"", esc(&l.name)),
        );
    }
    svg
}

/// Bars: one value per group per series, side by side; optional bands (low, high) per
/// group drawn behind them, with a reference line at their middle.
pub struct Bars {
    pub groups: Vec<String>,
    pub series: Vec<(String, RGBColor, Vec<f64>)>,
    pub bands: Vec<Option<(f64, f64)>>,
    pub band_name: String,
}

pub fn bars(frame: &Frame<'_>, b: &Bars) -> String {
    let mut svg = String::new();
    let calibration;
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        drawn(root.fill(&WHITE));
        let (left, right) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let n = b.groups.len().max(1);
        let x = -0.5..n as f64 - 0.5;
        let groups = &b.groups;
        let fmt = move |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                groups.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut chart = drawn(
            ChartBuilder::on(&left)
                .caption(frame.title, (FONT, 24))
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(frame.y_label_width)
                .build_cartesian_2d(x.clone(), frame.y.clone()),
        );
        drawn(
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc(frame.x_desc)
                .y_desc(frame.y_desc)
                .x_labels(2 * n + 1)
                .y_labels(frame.y_labels)
                .x_label_formatter(&fmt)
                .y_label_formatter(frame.y_fmt)
                .label_style((FONT, 16))
                .axis_desc_style((FONT, 17))
                .bold_line_style(RGBColor(0xDD, 0xDD, 0xDD))
                .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
                .draw(),
        );
        for (i, band) in b.bands.iter().enumerate() {
            if let Some((lo, hi)) = band {
                let i = i as f64;
                drawn(chart.draw_series(std::iter::once(Rectangle::new(
                    [(i - 0.45, *lo), (i + 0.45, *hi)],
                    GREY.mix(0.25).filled(),
                ))));
                let mid = (lo + hi) / 2.0;
                drawn(chart.draw_series(std::iter::once(PathElement::new(
                    vec![(i - 0.45, mid), (i + 0.45, mid)],
                    BLACK.stroke_width(2),
                ))));
            }
        }
        let m = b.series.len().max(1) as f64;
        for (j, (_, c, values)) in b.series.iter().enumerate() {
            for (i, v) in values.iter().enumerate() {
                let x0 = i as f64 - 0.4 + 0.8 * j as f64 / m;
                drawn(chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0 + 0.02, 0.0), (x0 + 0.8 / m - 0.02, *v)],
                    c.filled(),
                ))));
            }
        }
        drawn(chart.draw_series(std::iter::once(PathElement::new(vec![(x.start, 0.0), (x.end, 0.0)], BLACK))));
        let a = (x.start, frame.y.start);
        let bb = (x.end, frame.y.end);
        calibration = plot_attr(a, chart.backend_coord(&a), bb, chart.backend_coord(&bb));
        let entries: Vec<(String, RGBColor, u32)> = b.series.iter().map(|(n, c, _)| (n.clone(), *c, 8)).collect();
        let keys: Vec<ShadeKey> = if b.bands.iter().any(Option::is_some) {
            vec![ShadeKey { name: b.band_name.clone(), colour: GREY }]
        } else {
            Vec::new()
        };
        legend(&right, &entries, &keys);
        drawn(root.present());
    }
    annotate_root(&mut svg, &calibration);
    let mut at = 0;
    for (name, c, values) in &b.series {
        for g in b.groups.iter().take(values.len()) {
            at = annotate(
                &mut svg,
                at,
                "rect",
                &format!("fill=\"{}\"", hex(*c)),
                &format!("data-bar=\"{}/{}\"", esc(name), esc(g)),
            );
        }
    }
    svg
}

/// One mark on the timeline: an event at `t` in lane `lane`.
pub struct Mark {
    pub lane: usize,
    pub t: f64,
}

/// A bar on the timeline: a window in lane `lane`.
pub struct Span {
    pub lane: usize,
    pub from: f64,
    pub to: f64,
    pub colour: RGBColor,
}

/// An event timeline: one lane per event kind, windows as bars, events as ticks.
pub fn timeline(title: &str, x: Range<f64>, lanes: &[String], marks: &[Mark], spans: &[Span]) -> String {
    let mut svg = String::new();
    let height = (110 + 34 * lanes.len() as u32).max(180);
    let calibration;
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        drawn(root.fill(&WHITE));
        let (left, right) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let y = -0.5..lanes.len().max(1) as f64 - 0.5;
        let label_width = lanes.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32 * 8 + 16;
        let lane_fmt = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                lanes.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut chart = drawn(
            ChartBuilder::on(&left)
                .caption(title, (FONT, 24))
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(label_width.min(260))
                .build_cartesian_2d(x.clone(), y.clone()),
        );
        drawn(
            chart
                .configure_mesh()
                .disable_y_mesh()
                .x_desc("simulated time (s)")
                .x_labels(12)
                .y_labels(2 * lanes.len() + 1)
                .x_label_formatter(&num)
                .y_label_formatter(&lane_fmt)
                .label_style((FONT, 16))
                .axis_desc_style((FONT, 17))
                .bold_line_style(RGBColor(0xDD, 0xDD, 0xDD))
                .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
                .draw(),
        );
        for s in spans {
            let l = s.lane as f64;
            drawn(chart.draw_series(std::iter::once(Rectangle::new(
                [(s.from, l - 0.3), (s.to.max(s.from), l + 0.3)],
                s.colour.mix(0.35).filled(),
            ))));
        }
        for m in marks {
            let l = m.lane as f64;
            let c = colour(m.lane);
            drawn(chart.draw_series(std::iter::once(PathElement::new(
                vec![(m.t, l - 0.35), (m.t, l + 0.35)],
                c.stroke_width(2),
            ))));
        }
        let a = (x.start, y.start);
        let b = (x.end, y.end);
        calibration = plot_attr(a, chart.backend_coord(&a), b, chart.backend_coord(&b));
        let entries: Vec<(String, RGBColor, u32)> =
            lanes.iter().enumerate().map(|(i, l)| (l.clone(), colour(i), 2)).collect();
        legend(&right, &entries, &[]);
        drawn(root.present());
    }
    annotate_root(&mut svg, &calibration);
    svg
}

/// A note under a chart, as HTML.
pub fn note(text: &str) -> String {
    let mut s = String::new();
    let _ = write!(s, "<p class=\"note\">{}</p>", esc(text));
    s
}
