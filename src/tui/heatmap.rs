//! The heatmap widget: rows x columns of values drawn with half blocks (two
//! colour pixels per terminal cell). Magnitudes are coloured by
//! log10(|x| / reference) on viridis (perceptually uniform, readable with
//! colour-blindness); changes (log10 of attacked / original) on a diverging
//! red-blue palette, white where nothing changed. The data always fills the
//! area: rows and columns are repeated when there are fewer than pixels and
//! binned when there are more (by max for magnitudes, by the largest change
//! for changes), so one massive dimension never disappears among 2,000 that
//! share 100 columns.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

use crate::palette;

pub use crate::palette::{log_change, CHANGE_SPAN, LOG_HI, LOG_LO};

fn rgb((r, g, b): (u8, u8, u8)) -> Color {
    Color::Rgb(r, g, b)
}

/// The colour of |x| / reference on viridis.
pub fn color(value: f32, reference: f32) -> Color {
    rgb(palette::magnitude(value, reference))
}

/// The colour of a change, log10(attacked / original).
pub fn change_color(log_ratio: f32) -> Color {
    rgb(palette::change(log_ratio))
}

pub use crate::palette::Scale;

/// The colour at `t` in [0, 1] along a scale's colour bar.
pub fn bar_color(scale: Scale, t: f32) -> Color {
    rgb(scale.at(t))
}

/// The cursor pixel: pure white, which neither palette produces.
pub const CURSOR: Color = Color::Rgb(255, 255, 255);

/// Values (rows x cols) and the reference each row is divided by.
pub struct Heatmap<'a> {
    pub rows: &'a [Vec<f32>],
    pub reference: &'a [f32],
    pub cursor: Option<(usize, usize)>,
    pub scale: Scale,
}

/// How data rows and columns map onto the pixels of an area: pixel p of
/// P shows rows [p*n/P, (p+1)*n/P) (at least one), so the data fills the
/// area whether there are fewer rows than pixels or more.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub n_rows: usize,
    pub n_cols: usize,
    pub pixel_rows: usize,
    pub cells: usize,
}

fn span(i: usize, n: usize, slots: usize) -> std::ops::Range<usize> {
    let start = i * n / slots;
    let end = ((i + 1) * n / slots).max(start + 1).min(n);
    start..end
}

impl Geometry {
    pub fn new(area: Rect, n_rows: usize, n_cols: usize) -> Option<Self> {
        if area.width == 0 || area.height == 0 || n_rows == 0 || n_cols == 0 {
            return None;
        }
        Some(Self {
            n_rows,
            n_cols,
            pixel_rows: area.height as usize * 2,
            cells: area.width as usize,
        })
    }

    /// The data rows pixel row `p` shows.
    pub fn rows_of(&self, p: usize) -> std::ops::Range<usize> {
        span(p, self.n_rows, self.pixel_rows)
    }

    /// The data columns terminal column `c` shows.
    pub fn cols_of(&self, c: usize) -> std::ops::Range<usize> {
        span(c, self.n_cols, self.cells)
    }

    /// The terminal column that shows data column `col`.
    pub fn cell_of(&self, col: usize) -> usize {
        (0..self.cells)
            .find(|&c| self.cols_of(c).contains(&col))
            .unwrap_or(self.cells - 1)
    }

    /// The first pixel row that shows data row `row`.
    pub fn pixel_of(&self, row: usize) -> usize {
        (0..self.pixel_rows)
            .find(|&p| self.rows_of(p).contains(&row))
            .unwrap_or(self.pixel_rows - 1)
    }

    /// Data columns per terminal column (at least one): a cursor step.
    pub fn cols_per_cell(&self) -> usize {
        self.n_cols.div_ceil(self.cells).max(1)
    }

    /// The data (row, col) under a terminal position (the first of its bin).
    pub fn locate(&self, area: Rect, x: u16, y: u16, upper: bool) -> Option<(usize, usize)> {
        if x < area.x || y < area.y || x >= area.x + area.width || y >= area.y + area.height {
            return None;
        }
        let cell = (x - area.x) as usize;
        let pixel = (y - area.y) as usize * 2 + usize::from(!upper);
        Some((self.rows_of(pixel).start, self.cols_of(cell).start))
    }
}

impl Widget for Heatmap<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let n_rows = self.rows.len();
        let n_cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let Some(g) = Geometry::new(area, n_rows, n_cols) else {
            return;
        };
        // The bin's value (the largest |x| / reference, or the largest
        // change with its sign) and whether the cursor is in it.
        let pixel = |p: usize, c: usize| -> Option<(f32, bool)> {
            let mut best: Option<f32> = None;
            let mut has_cursor = false;
            for r in g.rows_of(p) {
                let reference = self.reference.get(r).copied().unwrap_or(1.0).max(1e-12);
                for col in g.cols_of(c) {
                    let Some(&x) = self.rows[r].get(col) else {
                        continue;
                    };
                    let v = match self.scale {
                        Scale::Magnitude => x.abs() / reference,
                        Scale::Change => x,
                    };
                    if best.is_none_or(|b| v.abs() > b.abs()) {
                        best = Some(v);
                    }
                    has_cursor |= self.cursor == Some((r, col));
                }
            }
            best.map(|b| (b, has_cursor))
        };
        let paint = |v: Option<(f32, bool)>| match v {
            None => None,
            Some((_, true)) => Some(CURSOR),
            Some((v, false)) => Some(rgb(self.scale.of(v))),
        };
        for y in 0..area.height as usize {
            for x in 0..g.cells {
                let Some(cell) = buf.cell_mut((area.x + x as u16, area.y + y as u16)) else {
                    continue;
                };
                // A pixel without data is left blank, never drawn in the
                // terminal's default colours (which show as grey stripes).
                match (paint(pixel(2 * y, x)), paint(pixel(2 * y + 1, x))) {
                    (Some(top), Some(bottom)) => {
                        cell.set_char('▀').set_fg(top).set_bg(bottom);
                    }
                    (Some(top), None) => {
                        cell.set_char('▀').set_fg(top).set_bg(Color::Reset);
                    }
                    (None, Some(bottom)) => {
                        cell.set_char('▄').set_fg(bottom).set_bg(Color::Reset);
                    }
                    (None, None) => {
                        cell.set_char(' ').set_fg(Color::Reset).set_bg(Color::Reset);
                    }
                }
            }
        }
    }
}

/// A one-line colour bar: the low label, the palette, the high label.
pub struct ColourBar {
    pub scale: Scale,
}

impl Widget for ColourBar {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.height == 0 {
            return;
        }
        let (lo, hi) = self.scale.ends();
        let label_width = (lo.chars().count() + hi.chars().count() + 2) as u16;
        if area.width < label_width + 4 {
            return;
        }
        let bar = (area.width - label_width).min(32);
        let y = area.y;
        buf.set_string(area.x, y, lo, ratatui::style::Style::new());
        let x0 = area.x + lo.chars().count() as u16 + 1;
        for i in 0..bar {
            let t = if bar > 1 {
                i as f32 / (bar - 1) as f32
            } else {
                0.5
            };
            if let Some(cell) = buf.cell_mut((x0 + i, y)) {
                cell.set_char('█')
                    .set_fg(bar_color(self.scale, t))
                    .set_bg(Color::Reset);
            }
        }
        buf.set_string(x0 + bar + 1, y, hi, ratatui::style::Style::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(rows: &[Vec<f32>], reference: &[f32], area: Rect, scale: Scale) -> Buffer {
        let mut buf = Buffer::empty(area);
        Heatmap {
            rows,
            reference,
            cursor: None,
            scale,
        }
        .render(area, &mut buf);
        buf
    }

    #[test]
    fn a_single_massive_dim_survives_binning() {
        // 1 row of 2000 dims into 10 columns: the one huge value lights its column.
        let mut row = vec![1.0f32; 2000];
        row[1234] = 20_000.0;
        let rows = vec![row];
        let area = Rect::new(0, 0, 10, 1);
        let buf = render(&rows, &[1.0], area, Scale::Magnitude);
        let fg = |x: u16| buf[(x, 0)].fg;
        assert_eq!(fg(6), color(20_000.0, 1.0));
        assert_eq!(fg(0), color(1.0, 1.0));
        assert_ne!(fg(6), fg(0));
        let g = Geometry::new(area, 1, 2000).unwrap();
        assert_eq!(g.cols_per_cell(), 200);
        assert_eq!(g.locate(area, 6, 0, true), Some((0, 1200)));
        assert_eq!(g.cell_of(1234), 6);
    }

    #[test]
    fn few_rows_fill_the_area_and_nothing_is_left_in_default_colours() {
        // 3 layers x 4 dims into 8 columns x 4 lines (8 pixel rows): every
        // cell is painted, each layer repeated over 2 or 3 pixel rows.
        let rows = vec![vec![1.0f32; 4], vec![100.0; 4], vec![10_000.0; 4]];
        let area = Rect::new(0, 0, 8, 4);
        let buf = render(&rows, &[1.0; 3], area, Scale::Magnitude);
        for y in 0..4 {
            for x in 0..8 {
                let c = &buf[(x, y)];
                assert_eq!(c.symbol(), "▀", "({x},{y})");
                assert_ne!(c.fg, Color::Reset);
                assert_ne!(c.bg, Color::Reset);
            }
        }
        assert_eq!(buf[(0, 0)].fg, color(1.0, 1.0));
        assert_eq!(buf[(7, 3)].bg, color(10_000.0, 1.0));
        let g = Geometry::new(area, 3, 4).unwrap();
        assert_eq!(g.rows_of(0), 0..1);
        assert_eq!(g.rows_of(7), 2..3);
        assert_eq!(g.pixel_of(1), 3);
    }

    #[test]
    fn changes_use_the_diverging_palette_and_keep_their_sign() {
        // Two dims binned into one column: the larger fall wins over a small rise.
        let rows = vec![vec![0.1f32, -2.5], vec![0.0, 0.0]];
        let area = Rect::new(0, 0, 1, 1);
        let buf = render(&rows, &[1.0; 2], area, Scale::Change);
        assert_eq!(buf[(0, 0)].fg, change_color(-2.5));
        assert_eq!(buf[(0, 0)].bg, change_color(0.0));
        assert_eq!(change_color(0.0), Color::Rgb(247, 247, 247));
        assert_eq!(change_color(-9.0), Color::Rgb(5, 48, 97));
        assert_eq!(change_color(9.0), Color::Rgb(103, 0, 31));
        assert!((log_change(0.0, 1000.0, 1.0) + 3.0).abs() < 1e-6);
        assert!((log_change(-50.0, 5.0, 1e-3) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_colour_bar_runs_from_dark_to_bright() {
        let area = Rect::new(0, 0, 60, 1);
        let mut buf = Buffer::empty(area);
        ColourBar {
            scale: Scale::Magnitude,
        }
        .render(area, &mut buf);
        let (lo, _) = Scale::Magnitude.ends();
        let first = lo.chars().count() as u16 + 1;
        assert_eq!(buf[(first, 0)].fg, color(0.1, 1.0));
        let last = (first..60)
            .rev()
            .find(|&x| buf[(x, 0)].symbol() == "█")
            .unwrap();
        assert_eq!(buf[(last, 0)].fg, color(10_000.0, 1.0));
    }

    #[test]
    fn tiny_areas_do_not_panic() {
        let rows = vec![vec![1.0f32; 5]; 3];
        for (w, h) in [(0, 0), (1, 1), (1, 0), (3, 1)] {
            let area = Rect::new(0, 0, w, h);
            let mut buf = Buffer::empty(area);
            Heatmap {
                rows: &rows,
                reference: &[1.0; 3],
                cursor: Some((2, 4)),
                scale: Scale::Magnitude,
            }
            .render(area, &mut buf);
            ColourBar {
                scale: Scale::Change,
            }
            .render(area, &mut buf);
        }
    }
}
