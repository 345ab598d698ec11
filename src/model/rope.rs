//! Rotary position embedding tables (Hugging Face's non-interleaved layout),
//! with the frequency scalings Llama checkpoints use.

use candle_core::{DType, Device, Result, Tensor};

use crate::checkpoint::RopeScaling;

/// cos/sin tables of shape (positions, rotary / 2), where `rotary` is the
/// number of leading dims of each head that rotate (all of them unless the
/// family rotates part of each head, as Phi-3 does).
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    /// cos and sin times attention's scale: rotating the queries with these
    /// applies the scale in the same kernel.
    cos_scaled: Tensor,
    sin_scaled: Tensor,
    /// The scale itself, for the query dims that do not rotate.
    scale: f64,
    rotary: usize,
    head_dim: usize,
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
    /// Tables for `inv_freq` (rotary / 2 frequencies) over heads of
    /// `head_dim`; queries are scaled by `scale`.
    pub fn new(
        inv_freq: &[f64],
        head_dim: usize,
        max_positions: usize,
        scale: f64,
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
        let scaled = |v: &[f32]| v.iter().map(|x| x * scale as f32).collect::<Vec<f32>>();
        let table =
            |v: Vec<f32>| Tensor::from_vec(v, (max_positions, half), device)?.to_dtype(dtype);
        Ok(Self {
            cos_scaled: table(scaled(&cos))?,
            sin_scaled: table(scaled(&sin))?,
            cos: table(cos)?,
            sin: table(sin)?,
            scale,
            rotary: 2 * half,
            head_dim,
            max_positions,
        })
    }

    /// Rotates x (batch, heads, tokens, head_dim) for positions start..start+tokens.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let (cos, sin) = (self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?);
        self.rotate(x, &cos, &sin, None)
    }

    /// Rotates and multiplies by attention's scale (for queries).
    pub fn apply_scaled(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos_scaled.narrow(0, start, t)?;
        let sin = self.sin_scaled.narrow(0, start, t)?;
        self.rotate(x, &cos, &sin, Some(self.scale))
    }

    /// Rotates the leading `rotary` dims with these table rows; the other
    /// dims pass through, times `pass_scale` when given.
    pub fn rotate(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        pass_scale: Option<f64>,
    ) -> Result<Tensor> {
        if self.rotary == self.head_dim {
            return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
        }
        let rot = x.narrow(3, 0, self.rotary)?.contiguous()?;
        let rot = candle_nn::rotary_emb::rope(&rot, cos, sin)?;
        let pass = x.narrow(3, self.rotary, self.head_dim - self.rotary)?;
        let pass = match pass_scale {
            Some(s) => pass.affine(s, 0.0)?,
            None => pass,
        };
        Tensor::cat(&[&rot, &pass], 3)?.contiguous()
    }

    /// The rows of (scaled cos, scaled sin, cos, sin) at a position held in
    /// a one-element u32 tensor, each (1, rotary / 2).
    pub fn tables_at(&self, pos: &Tensor) -> Result<[Tensor; 4]> {
        Ok([
            self.cos_scaled.index_select(pos, 0)?,
            self.sin_scaled.index_select(pos, 0)?,
            self.cos.index_select(pos, 0)?,
            self.sin.index_select(pos, 0)?,
        ])
    }

    /// Rotates a query (scaled) or key of one position with [`Self::tables_at`]'s rows.
    pub fn rotate_at(&self, x: &Tensor, tables: &[Tensor; 4], query: bool) -> Result<Tensor> {
        if query {
            self.rotate(x, &tables[0], &tables[1], Some(self.scale))
        } else {
            self.rotate(x, &tables[2], &tables[3], None)
        }
    }
}
