//! Rotary position embedding tables (Hugging Face's non-interleaved layout),
//! with the frequency scalings Llama checkpoints use.

use candle_core::{DType, Device, Result, Tensor};

use crate::checkpoint::RopeScaling;

/// cos/sin tables of shape (positions, head_dim / 2) for candle's fused
/// rotation of whole heads. A family that rotates only the first `rotary`
/// dims of each head (Phi-3) is run with its q/k rows in [`RotaryOrder`],
/// where the dims that pass through sit at table columns whose cos is 1
/// and sin 0: one kernel, and exactly the pass-through (x * 1 - y * 0 = x).
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    /// cos and sin times attention's scale: rotating the queries with these
    /// applies the scale in the same kernel (pass-through dims included).
    cos_scaled: Tensor,
    sin_scaled: Tensor,
    pub max_positions: usize,
}

/// The order of each head's dims in which a partial rotation becomes a
/// whole-head one. Hugging Face rotates dims i and i + R/2 for i < R/2 and
/// passes R..D through; candle's kernel pairs p and p + D/2. Stored dim p
/// holds Hugging Face dim `order[p]`: the rotated halves at 0..R/2 and
/// D/2..D/2+R/2, the passed-through halves after each. q and k are
/// reordered alike, so q.k (and everything after it) is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotaryOrder {
    order: Vec<usize>,
    /// inverse[order[p]] = p.
    inverse: Vec<usize>,
}

impl RotaryOrder {
    /// None when the whole head rotates (nothing to reorder).
    pub fn new(head_dim: usize, rotary: usize) -> Option<Self> {
        if rotary >= head_dim {
            return None;
        }
        let (half, rot_half, pass_half) = (head_dim / 2, rotary / 2, (head_dim - rotary) / 2);
        let order: Vec<usize> = (0..head_dim)
            .map(|p| {
                let (side, q) = (p / half, p % half);
                if q < rot_half {
                    side * rot_half + q
                } else {
                    rotary + side * pass_half + (q - rot_half)
                }
            })
            .collect();
        let mut inverse = vec![0; head_dim];
        for (p, &o) in order.iter().enumerate() {
            inverse[o] = p;
        }
        Some(Self { order, inverse })
    }

    fn head_dim(&self) -> usize {
        self.order.len()
    }

    /// The stored row of Hugging Face row `row` of a q or k projection.
    pub fn stored_row(&self, row: usize) -> usize {
        let hd = self.head_dim();
        row / hd * hd + self.inverse[row % hd]
    }

    /// Row indices that pick a Hugging Face (heads * head_dim)-row tensor
    /// into stored order (`index_select` over rows).
    pub fn to_stored(&self, rows: usize) -> Vec<u32> {
        let hd = self.head_dim();
        (0..rows)
            .map(|s| (s / hd * hd + self.order[s % hd]) as u32)
            .collect()
    }

    /// Row indices that pick stored rows back into Hugging Face order.
    pub fn to_hf(&self, rows: usize) -> Vec<u32> {
        (0..rows).map(|r| self.stored_row(r) as u32).collect()
    }
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
    /// `head_dim`, in [`RotaryOrder`] when rotary < head_dim; queries are
    /// scaled by `scale`.
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
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for c in 0..half {
                match inv.get(c) {
                    Some(&f) => {
                        let angle = p as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                    // A dim that passes through.
                    None => {
                        cos.push(1.0);
                        sin.push(0.0);
                    }
                }
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
            max_positions,
        })
    }

    /// Rotates x (batch, heads, tokens, head_dim) for positions start..start+tokens.
    /// `differentiable` gives the rotation a backward (candle's fused
    /// kernel has none).
    pub fn apply(&self, x: &Tensor, start: usize, differentiable: bool) -> Result<Tensor> {
        let t = x.dim(2)?;
        let (cos, sin) = (self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?);
        rotate(x, &cos, &sin, differentiable)
    }

    /// Rotates and multiplies by attention's scale (for queries).
    pub fn apply_scaled(&self, x: &Tensor, start: usize, differentiable: bool) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos_scaled.narrow(0, start, t)?;
        let sin = self.sin_scaled.narrow(0, start, t)?;
        rotate(x, &cos, &sin, differentiable)
    }

    /// The whole (positions, head_dim / 2) tables: scaled cos, scaled sin
    /// (for queries), cos, sin (for keys).
    pub fn tables(&self) -> [&Tensor; 4] {
        [&self.cos_scaled, &self.sin_scaled, &self.cos, &self.sin]
    }

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

    /// Rotates a query (scaled) or key with [`Self::tables_at`]'s rows: one
    /// position's, or (rows, tokens, head_dim / 2) of one position per token.
    pub fn rotate_at(&self, x: &Tensor, tables: &[Tensor; 4], query: bool) -> Result<Tensor> {
        if query {
            rotate(x, &tables[0], &tables[1], false)
        } else {
            rotate(x, &tables[2], &tables[3], false)
        }
    }
}

fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    if differentiable && x.track_op() {
        x.apply_op1(RotateWithGrad {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
        })
    } else {
        candle_nn::rotary_emb::rope(&x, cos, sin)
    }
}

/// candle's fused rotation with a backward (its own has none, and the
/// composed `rope_slow` takes seven kernels each way): a rotation's
/// transpose is the rotation by the opposite angle, so dx is the same
/// kernel with sin negated (and the same scale, for queries).
struct RotateWithGrad {
    cos: Tensor,
    sin: Tensor,
}

impl candle_core::CustomOp1 for RotateWithGrad {
    fn name(&self) -> &'static str {
        "mwtop-rope-with-grad"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        super::fused::cpu_through(storage, layout, |x| {
            candle_nn::rotary_emb::rope(x, &self.cos, &self.sin)
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        super::fused::cuda_through(storage, layout, |x| {
            candle_nn::rotary_emb::rope(x, &self.cos, &self.sin)
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = candle_nn::rotary_emb::rope(&grad.contiguous()?, &self.cos, &self.sin.neg()?)?;
        Ok(Some(back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_order_puts_rotated_halves_at_the_kernels_pairs() {
        // head_dim 8, rotary 4: HF pairs (0,2), (1,3); 4..8 pass through.
        let o = RotaryOrder::new(8, 4).unwrap();
        assert_eq!(o.order, vec![0, 1, 4, 5, 2, 3, 6, 7]);
        // Kernel pairs (p, p + 4): (0,4) -> HF (0,2), (1,5) -> HF (1,3).
        assert_eq!((o.order[0], o.order[4]), (0, 2));
        assert_eq!((o.order[1], o.order[5]), (1, 3));
        for r in 0..16 {
            assert_eq!(o.to_stored(16)[o.stored_row(r)] as usize, r);
        }
        assert!(RotaryOrder::new(8, 8).is_none());
    }

    /// The reordered full-width rotation equals Hugging Face's partial one
    /// (rotate the first R dims, pass the rest), computed here by hand.
    #[test]
    fn partial_rotation_in_rotary_order_equals_transformers() {
        let (hd, rot, pos) = (8usize, 4usize, 5usize);
        let inv = inv_freq(rot, 10_000.0, None, None);
        let rope = Rope::new(&inv, hd, 8, 1.0, DType::F32, &Device::Cpu).unwrap();
        let x: Vec<f32> = (0..hd).map(|i| 0.3 * i as f32 - 1.0).collect();
        let mut want = x.clone();
        for i in 0..rot / 2 {
            let a = pos as f32 * inv[i] as f32;
            let (c, s) = (a.cos(), a.sin());
            want[i] = x[i] * c - x[i + rot / 2] * s;
            want[i + rot / 2] = x[i + rot / 2] * c + x[i] * s;
        }
        let order = RotaryOrder::new(hd, rot).unwrap();
        let stored: Vec<f32> = order.to_stored(hd).iter().map(|&i| x[i as usize]).collect();
        let t = Tensor::from_vec(stored, (1, 1, 1, hd), &Device::Cpu).unwrap();
        let y = rope
            .apply(&t, pos, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let back: Vec<f32> = order.to_hf(hd).iter().map(|&s| y[s as usize]).collect();
        for (g, w) in back.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{back:?} vs {want:?}");
        }
    }
}
