//! A quantized GGUF matrix's blocks as they are (see
//! [`super::Checkpoint::quantized_rows`]): checked, and with GGUF's q/k
//! row order undone, row by row.

use candle_core::quantized::GgmlDType;

/// A quantized GGUF matrix's bytes (see [`super::Checkpoint::quantized_rows`]).
pub struct QuantizedRows {
    pub format: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    /// `rows` rows of cols / block-size blocks each.
    pub bytes: Vec<u8>,
}

/// Byte offsets of each block's f16 scales (and minimums) by format: the
/// values are finite exactly when these are (the quantized integers and
/// the 6-bit sub-scales are small).
/// None for the formats not listed.
pub(super) fn block_scale_offsets(format: GgmlDType) -> Option<&'static [usize]> {
    Some(match format {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
        GgmlDType::Q6K => &[208],
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::Q3K => &[108],
        _ => return None,
    })
}

pub(super) fn block_scales_finite(offsets: &[usize], format: GgmlDType, data: &[u8]) -> bool {
    data.chunks_exact(format.type_size()).all(|block| {
        offsets
            .iter()
            .all(|&o| half::f16::from_le_bytes([block[o], block[o + 1]]).is_finite())
    })
}

/// The rows of a q or k matrix from GGUF's order into Hugging Face's: per
/// head, GGUF interleaves the two rotary halves (half, 2); HF has (2, half).
/// `data` holds `rows` rows of whole blocks.
pub(super) fn unpermute_rope_rows(data: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows.max(1);
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for two in 0..2 {
            for i in 0..half {
                let r = (h * half + i) * 2 + two;
                out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
            }
        }
    }
    out
}
