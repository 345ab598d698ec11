//! Where a family normalizes the MLP's output before the residual add
//! (Gemma 2/3, OLMo 2), that norm's weight decides how much of a massive
//! d_ff state reaches the residual stream: its scale at the massive hidden
//! dims, layer by layer, is part of the story a scan tells.

use candle_core::{DType, Device};
use serde::Serialize;

use crate::model::{Model, Result};

/// One layer's post-MLP norm scale at one hidden dim.
#[derive(Debug, Clone, Serialize)]
pub struct NormScale {
    pub layer: usize,
    /// The multiplier the norm applies (Gemma's 1 + w).
    pub scale: f32,
    /// 1 for the largest |scale| of that layer's norm.
    pub rank: usize,
}

/// The post-MLP norm scales of every layer at one hidden dim.
#[derive(Debug, Clone, Serialize)]
pub struct NormScales {
    pub dim: usize,
    pub layers: Vec<NormScale>,
}

/// The post-MLP norm scale at each of `dims`; empty for families without
/// such a norm.
pub fn post_mlp_norm_scales(model: &Model, dims: &[usize]) -> Result<Vec<NormScales>> {
    let c = model.config();
    let mut per_layer = Vec::new();
    for layer in 0..c.n_layers {
        let Some(w) = model.post_mlp_norm(layer) else {
            return Ok(Vec::new());
        };
        per_layer.push(
            w.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    Ok(dims
        .iter()
        .filter(|&&d| d < c.d_model)
        .map(|&dim| NormScales {
            dim,
            layers: per_layer
                .iter()
                .enumerate()
                .map(|(layer, w)| NormScale {
                    layer,
                    scale: w[dim],
                    rank: 1 + w.iter().filter(|x| x.abs() > w[dim].abs()).count(),
                })
                .collect(),
        })
        .collect())
}
