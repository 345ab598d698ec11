//! The colour scales of every picture mwtop draws (the terminal heatmaps
//! and the exported figures), so a colour means the same everywhere:
//! magnitudes on viridis (perceptually uniform, readable with
//! colour-blindness), changes on ColorBrewer's diverging RdBu.

/// An sRGB colour.
pub type Rgb = (u8, u8, u8);

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

/// 11 stops of ColorBrewer's RdBu, blue (fell) to red (grew).
const RED_BLUE: [(u8, u8, u8); 11] = [
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
];

/// Changes are shown from 1000x smaller to 1000x larger (log10 -3 to 3).
pub const CHANGE_SPAN: f32 = 3.0;

fn interpolate(stops: &[(u8, u8, u8)], t: f32) -> Rgb {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let x = t * (stops.len() - 1) as f32;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f32;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |p: u8, q: u8| (p as f32 + (q as f32 - p as f32) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// log10(|attacked| / |original|), with both floored at `floor` (a small
/// fraction of the layer's median) so a value that vanishes reads as a large
/// finite fall rather than minus infinity.
pub fn log_change(attacked: f32, original: f32, floor: f32) -> f32 {
    let f = floor.max(1e-12);
    (attacked.abs().max(f) / original.abs().max(f)).log10()
}

/// Where `t` in [0, 1] falls on viridis.
pub fn viridis(t: f32) -> Rgb {
    interpolate(&VIRIDIS, t)
}

/// Where `t` in [0, 1] falls on the diverging scale (0 fell, 1 grew).
pub fn red_blue(t: f32) -> Rgb {
    interpolate(&RED_BLUE, t)
}

/// The colour of |x| / reference: 0.1x and below darkest, 10,000x and above brightest.
pub fn magnitude(value: f32, reference: f32) -> Rgb {
    let ratio = value.abs() / reference.max(1e-12);
    let l = if ratio > 0.0 { ratio.log10() } else { LOG_LO };
    viridis((l - LOG_LO) / (LOG_HI - LOG_LO))
}

/// The colour of a change, log10(attacked / original): 1000x less darkest
/// blue, unchanged near white, 1000x more darkest red.
pub fn change(log_ratio: f32) -> Rgb {
    let l = if log_ratio.is_nan() { 0.0 } else { log_ratio };
    red_blue((l + CHANGE_SPAN) / (2.0 * CHANGE_SPAN))
}

/// The colour bars' end labels.
pub const MAGNITUDE_ENDS: (&str, &str) = ("<=0.1x", ">=10000x median");
pub const CHANGE_ENDS: (&str, &str) = ("1000x less", "1000x more");

/// How values become colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// |x| / reference on viridis.
    Magnitude,
    /// The values are log10 changes, on the diverging scale.
    Change,
}

impl Scale {
    /// The colour at `t` in [0, 1] along the colour bar.
    pub fn at(self, t: f32) -> Rgb {
        match self {
            Scale::Magnitude => viridis(t),
            Scale::Change => red_blue(t),
        }
    }

    /// The colour of a value: |x| / reference, or a log10 change.
    pub fn of(self, v: f32) -> Rgb {
        match self {
            Scale::Magnitude => magnitude(v, 1.0),
            Scale::Change => change(v),
        }
    }

    /// The colour bar's end labels.
    pub fn ends(self) -> (&'static str, &'static str) {
        match self {
            Scale::Magnitude => MAGNITUDE_ENDS,
            Scale::Change => CHANGE_ENDS,
        }
    }
}
