//! The heatmap widget: rows x columns of values drawn with half blocks (two
//! colour pixels per terminal cell), colour = log10(|x| / reference) on the
//! viridis palette (perceptually uniform, readable with colour-blindness).
//! Columns (and rows, when there are more than pixels) are binned by max, so
//! one massive dimension never disappears among 2,000 that share 100 columns.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

/// 16 stops of matplotlib's viridis, dark (low) to yellow (high).
const VIRIDIS: [(u8, u8, u8); 16] = [
    (68, 1, 84),
    (72, 26, 108),
    (71, 47, 125),
    (65, 68, 135),
    (57, 86, 140),
    (49, 104, 142),
    (42, 120, 142),
    (35, 136, 142),
    (31, 152, 139),
    (34, 168, 132),
    (53, 183, 121),
    (84, 197, 104),
    (122, 209, 81),
    (165, 219, 54),
    (210, 226, 27),
    (253, 231, 37),
];

/// Log10 ratios mapped onto the palette: 0.1x median and below is darkest,
/// 10,000x and above brightest.
pub const LOG_LO: f32 = -1.0;
pub const LOG_HI: f32 = 4.0;

/// The colour of |x| / reference on the palette.
pub fn color(value: f32, reference: f32) -> Color {
    let ratio = value.abs() / reference.max(1e-12);
    let l = if ratio > 0.0 { ratio.log10() } else { LOG_LO };
    let t = ((l - LOG_LO) / (LOG_HI - LOG_LO)).clamp(0.0, 1.0);
    let x = t * (VIRIDIS.len() - 1) as f32;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |p: u8, q: u8| (p as f32 + (q as f32 - p as f32) * f).round() as u8;
    Color::Rgb(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The cursor pixel: white, which the palette never produces.
pub const CURSOR: Color = Color::Rgb(255, 255, 255);

/// Values (rows x cols) and the reference each row is divided by.
pub struct Heatmap<'a> {
    pub rows: &'a [Vec<f32>],
    pub reference: &'a [f32],
    pub cursor: Option<(usize, usize)>,
}

/// How data rows and columns fold onto pixels of an area.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub rows_per_pixel: usize,
    pub cols_per_cell: usize,
    pub pixel_rows: usize,
    pub cells: usize,
}

impl Geometry {
    pub fn new(area: Rect, n_rows: usize, n_cols: usize) -> Option<Self> {
        if area.width == 0 || area.height == 0 || n_rows == 0 || n_cols == 0 {
            return None;
        }
        let pixels = area.height as usize * 2;
        let rows_per_pixel = n_rows.div_ceil(pixels);
        let cols_per_cell = n_cols.div_ceil(area.width as usize);
        Some(Self {
            rows_per_pixel,
            cols_per_cell,
            pixel_rows: n_rows.div_ceil(rows_per_pixel),
            cells: n_cols.div_ceil(cols_per_cell),
        })
    }

    /// The data (row, col) under a terminal position (the first of its bin).
    pub fn locate(&self, area: Rect, x: u16, y: u16, upper: bool) -> Option<(usize, usize)> {
        if x < area.x || y < area.y || x >= area.x + area.width || y >= area.y + area.height {
            return None;
        }
        let cell = (x - area.x) as usize;
        let pixel = (y - area.y) as usize * 2 + usize::from(!upper);
        (cell < self.cells && pixel < self.pixel_rows)
            .then(|| (pixel * self.rows_per_pixel, cell * self.cols_per_cell))
    }
}

impl Widget for Heatmap<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let n_rows = self.rows.len();
        let n_cols = self.rows.first().map_or(0, Vec::len);
        let Some(g) = Geometry::new(area, n_rows, n_cols) else {
            return;
        };
        // Binned (max |x| / reference) per pixel; the colour compares it to 1.
        let pixel = |p: usize, c: usize| -> Option<(f32, bool)> {
            let r0 = p * g.rows_per_pixel;
            if r0 >= n_rows {
                return None;
            }
            let c0 = c * g.cols_per_cell;
            let mut best = 0f32;
            let mut has_cursor = false;
            for r in r0..(r0 + g.rows_per_pixel).min(n_rows) {
                let reference = self.reference.get(r).copied().unwrap_or(1.0).max(1e-12);
                for col in c0..(c0 + g.cols_per_cell).min(self.rows[r].len()) {
                    best = best.max(self.rows[r][col].abs() / reference);
                    has_cursor |= self.cursor == Some((r, col));
                }
            }
            Some((best, has_cursor))
        };
        let paint = |v: Option<(f32, bool)>| match v {
            None => Color::Reset,
            Some((_, true)) => CURSOR,
            Some((ratio, false)) => color(ratio, 1.0),
        };
        for y in 0..area.height as usize {
            for x in 0..(g.cells.min(area.width as usize)) {
                let top = paint(pixel(2 * y, x));
                let bottom = paint(pixel(2 * y + 1, x));
                if let Some(cell) = buf.cell_mut((area.x + x as u16, area.y + y as u16)) {
                    cell.set_char('▀').set_fg(top).set_bg(bottom);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_massive_dim_survives_binning() {
        // 1 row of 2000 dims into 10 columns: the one huge value lights its column.
        let mut row = vec![1.0f32; 2000];
        row[1234] = 20_000.0;
        let rows = vec![row];
        let area = Rect::new(0, 0, 10, 1);
        let mut buf = Buffer::empty(area);
        Heatmap {
            rows: &rows,
            reference: &[1.0],
            cursor: None,
        }
        .render(area, &mut buf);
        let fg = |x: u16| buf[(x, 0)].fg;
        assert_eq!(fg(6), color(20_000.0, 1.0));
        assert_eq!(fg(0), color(1.0, 1.0));
        assert_ne!(fg(6), fg(0));
        let g = Geometry::new(area, 1, 2000).unwrap();
        assert_eq!(g.cols_per_cell, 200);
        assert_eq!(g.locate(area, 6, 0, true), Some((0, 1200)));
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
            }
            .render(area, &mut buf);
        }
    }
}
