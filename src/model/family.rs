//! One forward for every family, described per architecture when the model
//! loads: where the norms sit, how queries and keys are normalized, the
//! activation, the scales and soft caps, and whether the checkpoint fuses
//! projections. The block and attention code read this description; no
//! family has a forward of its own.

use crate::checkpoint::{Architecture, ModelConfig, NormKind};

use super::{ModelError, Result};

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// How queries and keys are normalized before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QkNorm {
    /// Each head over head_dim (Qwen3, Gemma 3).
    PerHead,
    /// The whole projection, before it splits into heads (OLMo 2).
    Whole,
}

/// How one family computes a decoder block.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Family {
    /// The norm on the residual stream before attention (None in OLMo 2).
    pub attn_in: Option<NormKind>,
    /// The norm on attention's output before the residual add (Gemma, OLMo 2).
    pub attn_out: Option<NormKind>,
    /// The norm before the MLP (None in OLMo 2).
    pub mlp_in: Option<NormKind>,
    /// The norm on the MLP's output before the residual add (Gemma, OLMo 2).
    pub mlp_out: Option<NormKind>,
    pub qk_norm: Option<QkNorm>,
    /// Norm weights scale by (1 + w) (Gemma).
    pub offset_norms: bool,
    pub activation: Activation,
    /// Embeddings times sqrt(d_model) (Gemma).
    pub scale_embeddings: bool,
    /// Scores are q k^T times this.
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// q/k/v and gate/up come as one tensor each (Phi-3).
    pub fused: bool,
}

impl Family {
    pub(super) fn of(c: &ModelConfig) -> Result<Self> {
        use Architecture as A;
        let arch = c.architecture;
        let activation = match c.hidden_act.as_str() {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" => Activation::GeluTanh,
            other => {
                let key = if arch.is_gemma() {
                    "hidden_activation"
                } else {
                    "hidden_act"
                };
                return Err(ModelError::Unsupported(format!(
                    "{key} {other:?} is not implemented (mwtop computes silu and gelu_pytorch_tanh)"
                )));
            }
        };
        let (attn_in, attn_out, mlp_in, mlp_out) = match arch {
            A::Olmo2 => (
                None,
                Some(NormKind::PostAttention),
                None,
                Some(NormKind::PostFeedforward),
            ),
            A::Gemma2 | A::Gemma3 => (
                Some(NormKind::Input),
                Some(NormKind::PostAttention),
                Some(NormKind::PreFeedforward),
                Some(NormKind::PostFeedforward),
            ),
            _ => (
                Some(NormKind::Input),
                None,
                Some(NormKind::PostAttention),
                None,
            ),
        };
        let qk_norm = match arch {
            A::Qwen3 | A::Gemma3 => Some(QkNorm::PerHead),
            A::Olmo2 => Some(QkNorm::Whole),
            _ => None,
        };
        let layout = &c.attention;
        let attn_scale = 1.0
            / layout
                .query_pre_attn_scalar
                .unwrap_or(c.head_dim as f64)
                .sqrt();
        Ok(Self {
            attn_in,
            attn_out,
            mlp_in,
            mlp_out,
            qk_norm,
            offset_norms: arch.is_gemma(),
            activation,
            scale_embeddings: arch.is_gemma(),
            attn_scale,
            attn_softcap: layout.attn_logit_softcapping,
            final_softcap: layout.final_logit_softcapping,
            fused: arch == A::Phi3,
        })
    }
}
