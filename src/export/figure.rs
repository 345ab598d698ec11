//! Figures for papers and lectures, drawn with plotters as PNG or SVG: the
//! UI's heatmaps (the same colour scales, see [`crate::palette`]) with
//! axes, ticks, the massive dims marked and a colour bar; and line charts
//! (the sweep's perplexity against k). Rendered into memory; the caller
//! writes the bytes (see [`super::write_atomically`]).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::ExportError;
use crate::palette::{Rgb, Scale};

/// The font every figure uses, bundled (DejaVu Sans Mono, its licence in
/// assets/fonts/LICENSE) so a machine without fonts draws the same PNG.
/// Registered as "monospace", the family an SVG viewer falls back to.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
const FAMILY: &str = "monospace";

fn register_font() -> Result<(), ExportError> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ExportError::Draw("the bundled font does not load".into()))
    }
}

/// PNG or SVG, from the output file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    pub fn from_path(path: &std::path::Path) -> Result<Self, ExportError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(ExportError::Format(format!(
                "{}: the figure's file must end in .png or .svg",
                path.display()
            ))),
        }
    }
}

/// One heatmap: rows of values, each row's reference (what |x| is divided
/// by; ignored for changes), and the axes.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub rows: Vec<Vec<f32>>,
    pub reference: Vec<f32>,
    pub scale: Scale,
    /// "layer" or "token".
    pub row_axis: String,
    /// "hidden dim" or "d_ff dim".
    pub col_axis: String,
    /// A label per row (layer numbers, token texts).
    pub row_labels: Vec<String>,
    /// Columns marked under the axis (the massive dims).
    pub marks: Vec<usize>,
}

/// Panels side by side under one title, one colour bar per scale.
#[derive(Debug, Clone)]
pub struct HeatmapFigure {
    pub title: String,
    pub panels: Vec<Panel>,
}

/// Lines through points, on log axes where asked.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_axis: String,
    pub y_axis: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// A horizontal reference line (the original's perplexity) and its name.
    pub baseline: Option<(String, f64)>,
    pub log_y: bool,
}

type DrawResult<T = ()> = Result<T, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// What a figure is: a size and a drawing on any plotters backend.
trait Drawing {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

/// Renders with the backend of `format` into PNG bytes or SVG text.
fn render(d: &impl Drawing, format: Format) -> Result<Vec<u8>, ExportError> {
    register_font()?;
    let size = d.size();
    match format {
        Format::Png => {
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                d.draw(&root).map_err(ExportError::Draw)?;
                root.present().map_err(|e| ExportError::Draw(err(e)))?;
            }
            encode_png(&rgb, size)
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                d.draw(&root).map_err(ExportError::Draw)?;
                root.present().map_err(|e| ExportError::Draw(err(e)))?;
            }
            Ok(svg.into_bytes())
        }
    }
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, ExportError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder
        .write_header()
        .map_err(|e| ExportError::Draw(e.to_string()))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| ExportError::Draw(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| ExportError::Draw(e.to_string()))?;
    Ok(out)
}

fn colour((r, g, b): Rgb) -> RGBColor {
    RGBColor(r, g, b)
}

fn text_style(size: u32, pos: Pos) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
        .color(&BLACK)
        .pos(pos)
}

/// The pixel span of bin `i` of `bins` over `len` pixels, and the data
/// span of bin `i` of `bins` over `n` values: bins cover both evenly.
fn span(i: usize, n: usize, bins: usize) -> std::ops::Range<usize> {
    let start = i * n / bins;
    let end = ((i + 1) * n / bins).max(start + 1).min(n);
    start..end
}

/// Figure geometry, in pixels.
const PANEL_W: u32 = 560;
const PANEL_H: u32 = 520;
const BAR_W: u32 = 150;
const TITLE_H: i32 = 44;

impl Drawing for HeatmapFigure {
    fn size(&self) -> (u32, u32) {
        let scales = self.scales().len() as u32;
        (
            PANEL_W * self.panels.len().max(1) as u32 + BAR_W * scales,
            PANEL_H + TITLE_H as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(err)?;
        let (w, _) = self.size();
        root.draw(&Text::new(
            self.title.clone(),
            (w as i32 / 2, TITLE_H / 2),
            text_style(20, Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(err)?;
        for (i, p) in self.panels.iter().enumerate() {
            self.draw_panel(root, i, p)?;
        }
        let x0 = PANEL_W as i32 * self.panels.len() as i32;
        for (i, scale) in self.scales().into_iter().enumerate() {
            draw_colour_bar(root, x0 + BAR_W as i32 * i as i32, scale)?;
        }
        Ok(())
    }
}

impl HeatmapFigure {
    /// The figure's pixel size: the panels side by side and the colour bars.
    pub fn pixels(&self) -> (u32, u32) {
        self.size()
    }

    fn scales(&self) -> Vec<Scale> {
        let mut s: Vec<Scale> = Vec::new();
        for p in &self.panels {
            if !s.contains(&p.scale) {
                s.push(p.scale);
            }
        }
        s
    }

    /// The figure as PNG bytes or SVG text.
    pub fn render(&self, format: Format) -> Result<Vec<u8>, ExportError> {
        if self
            .panels
            .iter()
            .any(|p| p.rows.is_empty() || p.rows[0].is_empty())
        {
            return Err(ExportError::Draw(
                "a panel of the figure has no data".into(),
            ));
        }
        render(self, format)
    }

    /// Where each panel's cells go, in pixels: (x, y, width, height).
    pub fn plot_rect(&self, panel: usize) -> (i32, i32, i32, i32) {
        let label_w = self.panels[panel]
            .row_labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(1)
            .clamp(2, 10) as i32
            * 8
            + 34;
        let x = PANEL_W as i32 * panel as i32 + label_w;
        let y = TITLE_H + 30;
        (
            x,
            y,
            PANEL_W as i32 - label_w - 16,
            PANEL_H as i32 - 30 - 64,
        )
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        index: usize,
        p: &Panel,
    ) -> DrawResult {
        let (x, y, w, h) = self.plot_rect(index);
        let n_rows = p.rows.len();
        let n_cols = p.rows.iter().map(Vec::len).max().unwrap_or(0);
        let (bins_x, bins_y) = (n_cols.min(w as usize), n_rows.min(h as usize));
        root.draw(&Text::new(
            p.title.clone(),
            (x + w / 2, y - 16),
            text_style(15, Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(err)?;
        // Cells: each bin the largest |x| / reference (or the largest change).
        for by in 0..bins_y {
            let rows = span(by, n_rows, bins_y);
            let py = span(by, h as usize, bins_y);
            for bx in 0..bins_x {
                let cols = span(bx, n_cols, bins_x);
                let px = span(bx, w as usize, bins_x);
                let mut best: Option<f32> = None;
                for r in rows.clone() {
                    let reference = p.reference.get(r).copied().unwrap_or(1.0).max(1e-12);
                    for c in cols.clone() {
                        let Some(&v) = p.rows[r].get(c) else { continue };
                        let v = match p.scale {
                            Scale::Magnitude => v.abs() / reference,
                            Scale::Change => v,
                        };
                        if best.is_none_or(|b| v.abs() > b.abs()) {
                            best = Some(v);
                        }
                    }
                }
                let Some(v) = best else { continue };
                root.draw(&Rectangle::new(
                    [
                        (x + px.start as i32, y + py.start as i32),
                        (x + px.end as i32, y + py.end as i32),
                    ],
                    colour(p.scale.of(v)).filled(),
                ))
                .map_err(err)?;
            }
        }
        root.draw(&Rectangle::new(
            [(x, y), (x + w, y + h)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        // Row labels: every row when they fit, else evenly spaced ones.
        let step = n_rows.div_ceil((h as usize / 14).max(1)).max(1);
        for r in (0..n_rows).step_by(step) {
            let cy = y + ((r as f64 + 0.5) * h as f64 / n_rows as f64) as i32;
            let label: String = p
                .row_labels
                .get(r)
                .map_or(String::new(), |l| l.chars().take(10).collect());
            root.draw(&Text::new(
                label,
                (x - 6, cy),
                text_style(12, Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
        }
        root.draw(&Text::new(
            p.row_axis.clone(),
            (x - 6, y - 4),
            text_style(12, Pos::new(HPos::Right, VPos::Bottom)),
        ))
        .map_err(err)?;
        // Column ticks: 0, a few round values, the last dim; the massive dims marked.
        let col_x = |c: f64| x + (c * w as f64 / n_cols as f64) as i32;
        let tick = nice_step(n_cols);
        let mut ticks: Vec<usize> = (0..n_cols).step_by(tick).collect();
        if ticks.last().is_some_and(|&t| (n_cols - 1 - t) * 8 > tick) {
            ticks.push(n_cols - 1);
        }
        for &t in &ticks {
            let tx = col_x(t as f64 + 0.5);
            root.draw(&PathElement::new(vec![(tx, y + h), (tx, y + h + 4)], BLACK))
                .map_err(err)?;
            root.draw(&Text::new(
                t.to_string(),
                (tx, y + h + 6),
                text_style(11, Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        for (i, &m) in p.marks.iter().enumerate() {
            let tx = col_x(m as f64 + 0.5);
            let red = RGBColor(200, 0, 0);
            root.draw(&Text::new(
                format!("▲{m}"),
                (tx, y + h + 22 + 12 * (i as i32 % 2)),
                TextStyle::from((FAMILY, 11).into_font())
                    .color(&red)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
        }
        root.draw(&Text::new(
            p.col_axis.clone(),
            (x + w / 2, y + h + 50),
            text_style(13, Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
        Ok(())
    }
}

/// A round tick spacing giving about six ticks over `n`.
fn nice_step(n: usize) -> usize {
    let raw = (n / 6).max(1);
    let mag = 10usize.pow((raw as f64).log10().floor() as u32);
    [1, 2, 5, 10]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(raw)
}

fn draw_colour_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    x0: i32,
    scale: Scale,
) -> DrawResult {
    let (y0, h, w) = (TITLE_H + 40, PANEL_H as i32 - 140, 22);
    for i in 0..h {
        let t = 1.0 - i as f32 / (h - 1) as f32;
        root.draw(&Rectangle::new(
            [(x0 + 10, y0 + i), (x0 + 10 + w, y0 + i + 1)],
            colour(scale.at(t)).filled(),
        ))
        .map_err(err)?;
    }
    root.draw(&Rectangle::new(
        [(x0 + 10, y0), (x0 + 10 + w, y0 + h)],
        BLACK.stroke_width(1),
    ))
    .map_err(err)?;
    let labels: Vec<(f32, String)> = match scale {
        Scale::Magnitude => {
            let (lo, hi) = (crate::palette::LOG_LO, crate::palette::LOG_HI);
            (0..=5)
                .map(|i| {
                    let l = lo + (hi - lo) * i as f32 / 5.0;
                    ((l - lo) / (hi - lo), format!("{}x", 10f64.powf(l as f64)))
                })
                .collect()
        }
        Scale::Change => {
            let s = crate::palette::CHANGE_SPAN;
            (-3..=3)
                .map(|i| {
                    let l = i as f32 * s / 3.0;
                    let text = match i {
                        0 => "same".to_string(),
                        i if i < 0 => format!("/{}", 10f64.powf(-l as f64)),
                        _ => format!("x{}", 10f64.powf(l as f64)),
                    };
                    ((l + s) / (2.0 * s), text)
                })
                .collect()
        }
    };
    for (t, text) in labels {
        let ly = y0 + ((1.0 - t) * (h - 1) as f32) as i32;
        root.draw(&Text::new(
            text,
            (x0 + 16 + w, ly),
            text_style(11, Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
    }
    let caption = match scale {
        Scale::Magnitude => "|x| / median",
        Scale::Change => "attacked / original",
    };
    root.draw(&Text::new(
        caption,
        (x0 + 6, y0 - 12),
        text_style(11, Pos::new(HPos::Left, VPos::Bottom)),
    ))
    .map_err(err)?;
    Ok(())
}

impl LineChart {
    pub const SIZE: (u32, u32) = (900, 560);

    /// Every point drawn (the baseline's too), finite and, on a log axis, positive.
    fn points(&self) -> Vec<(f64, f64)> {
        let finite = |v: f64| v.is_finite() && (!self.log_y || v > 0.0);
        self.series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .chain(self.baseline.iter().map(|(_, b)| (0.0, *b)))
            .filter(|&(_, y)| finite(y))
            .collect()
    }

    /// The chart as PNG bytes or SVG text.
    pub fn render(&self, format: Format) -> Result<Vec<u8>, ExportError> {
        if self.points().is_empty() {
            return Err(ExportError::Draw("the chart has no finite points".into()));
        }
        render(self, format)
    }
}

impl Drawing for LineChart {
    fn size(&self) -> (u32, u32) {
        Self::SIZE
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let points = self.points();
        root.fill(&WHITE).map_err(err)?;
        let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
        let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let y_max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let palette = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
        ];
        let mut builder = ChartBuilder::on(root);
        let chart = builder
            .caption(self.title.clone(), (FAMILY, 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70);
        macro_rules! finish {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(self.x_axis.clone())
                    .y_desc(self.y_axis.clone())
                    .label_style((FAMILY, 12))
                    .axis_desc_style((FAMILY, 14))
                    .draw()
                    .map_err(err)?;
                if let Some((name, b)) = &self.baseline {
                    let b = *b;
                    chart
                        .draw_series(LineSeries::new(
                            vec![(0.0, b), (x_max, b)],
                            BLACK.stroke_width(1),
                        ))
                        .map_err(err)?
                        .label(name.clone())
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
                }
                for (i, (name, pts)) in self.series.iter().enumerate() {
                    let c = palette[i % palette.len()];
                    let pts: Vec<(f64, f64)> = pts
                        .iter()
                        .copied()
                        .filter(|&(_, y)| y.is_finite() && (!self.log_y || y > 0.0))
                        .collect();
                    chart
                        .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                        .map_err(err)?
                        .label(name.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                        });
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(err)?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.9))
                    .border_style(BLACK)
                    .label_font((FAMILY, 12))
                    .position(SeriesLabelPosition::UpperLeft)
                    .draw()
                    .map_err(err)?;
            }};
        }
        let x_range = 0.0..x_max * 1.05;
        // A log axis labels powers of ten only: within one decade, linear.
        if self.log_y && y_max / y_min > 10.0 {
            let y_range = (y_min / 1.5)..(y_max * 1.5);
            finish!(chart
                .build_cartesian_2d(x_range, y_range.log_scale())
                .map_err(err)?);
        } else {
            let pad = (y_max - y_min).abs().max(1e-9) * 0.08;
            finish!(chart
                .build_cartesian_2d(x_range, (y_min - pad)..(y_max + pad))
                .map_err(err)?);
        }
        Ok(())
    }
}
