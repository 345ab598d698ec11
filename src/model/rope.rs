//! Rotary position embedding tables (Hugging Face's non-interleaved layout),
//! with the frequency scalings Llama checkpoints use.

use candle_core::{DType, Device, Result, Tensor};

use crate::checkpoint::RopeScaling;

/// cos/sin tables of shape (positions, head_dim / 2).
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    /// cos and sin times 1/sqrt(head_dim): rotating the queries with these
    /// applies attention's scale in the same kernel.
    cos_scaled: Tensor,
    sin_scaled: Tensor,
    pub max_positions: usize,
}

/// The inverse frequencies after scaling. `factors` are GGUF's rope_freqs divisors.
pub fn inv_freq(
    head_dim: usize,
    theta: f64,
    scaling: Option<&RopeScaling>,
    factors: Option<&[f32]>,
) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::FrequencyFactors { .. }) => match factors {
            Some(fs) => base.iter().zip(fs).map(|(f, d)| f / *d as f64).collect(),
            None => base,
        },
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            // transformers' _compute_llama3_parameters.
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl Rope {
    pub fn new(
        inv_freq: &[f64],
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // Like transformers: frequencies in f32, position * inv_freq in f32.
        let inv: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let scale = 1.0 / (2.0 * half as f32).sqrt();
        let scaled = |v: &[f32]| v.iter().map(|x| x * scale).collect::<Vec<f32>>();
        let table =
            |v: Vec<f32>| Tensor::from_vec(v, (max_positions, half), device)?.to_dtype(dtype);
        Ok(Self {
            cos_scaled: table(scaled(&cos))?,
            sin_scaled: table(scaled(&sin))?,
            cos: table(cos)?,
            sin: table(sin)?,
            max_positions,
        })
    }

    /// Rotates x (batch, heads, tokens, head_dim) for positions start..start+tokens.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        rotate(x, &self.cos, &self.sin, start)
    }

    /// Rotates and multiplies by 1/sqrt(head_dim) (for queries).
    pub fn apply_scaled(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        rotate(x, &self.cos_scaled, &self.sin_scaled, start)
    }
}

impl Rope {
    /// The rows of (scaled cos, scaled sin, cos, sin) at a position held in
    /// a one-element u32 tensor, each (1, head_dim / 2).
    pub fn tables_at(&self, pos: &Tensor) -> Result<[Tensor; 4]> {
        Ok([
            self.cos_scaled.index_select(pos, 0)?,
            self.sin_scaled.index_select(pos, 0)?,
            self.cos.index_select(pos, 0)?,
            self.sin.index_select(pos, 0)?,
        ])
    }
}

/// Rotates x (batch, heads, 1, head_dim) by one position's table rows.
pub fn rotate_with(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)
}

fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, start: usize) -> Result<Tensor> {
    let t = x.dim(2)?;
    let cos = cos.narrow(0, start, t)?;
    let sin = sin.narrow(0, start, t)?;
    candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
}
