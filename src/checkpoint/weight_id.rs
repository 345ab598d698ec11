//! Typed names of the matrices (and norms) a model edits and reads back: a layer and a
//! projection instead of a string. The Hugging Face spelling
//! (`model.layers.{i}.mlp.up_proj.weight`) is made and parsed only here, at
//! the checkpoint boundary.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A projection inside a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The module path under `model.layers.{i}`.
    pub fn hf_module(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }
}

/// One weight matrix of a decoder-only model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightId {
    /// The token embedding (d_model columns, one row per token).
    Embed,
    /// The output head (the embedding itself when the two are tied).
    Head,
    Layer {
        layer: usize,
        proj: Proj,
    },
}

impl WeightId {
    pub fn layer(layer: usize, proj: Proj) -> Self {
        Self::Layer { layer, proj }
    }

    /// The Hugging Face tensor name.
    pub fn hf_name(self) -> String {
        match self {
            Self::Embed => "model.embed_tokens.weight".into(),
            Self::Head => "lm_head.weight".into(),
            Self::Layer { layer, proj } => {
                format!("model.layers.{layer}.{}.weight", proj.hf_module())
            }
        }
    }

    /// Parses a Hugging Face tensor name; None for anything that is not one
    /// of these matrices (norms, biases, unknown names).
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "model.embed_tokens.weight" => return Some(Self::Embed),
            "lm_head.weight" => return Some(Self::Head),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let module = rest.strip_suffix(".weight")?;
        // A layer number is plain digits ("+1" or "01" name no tensor).
        if layer.is_empty()
            || !layer.bytes().all(|b| b.is_ascii_digit())
            || (layer.len() > 1 && layer.starts_with('0'))
        {
            return None;
        }
        let layer = layer.parse().ok()?;
        let proj = Proj::ALL.into_iter().find(|p| p.hf_module() == module)?;
        Some(Self::Layer { layer, proj })
    }
}

impl fmt::Display for WeightId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hf_name())
    }
}

impl FromStr for WeightId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_hf_name(s).ok_or_else(|| {
            format!(
                "{s:?} names no weight matrix (expected e.g. model.layers.3.mlp.down_proj.weight, model.embed_tokens.weight or lm_head.weight)"
            )
        })
    }
}

/// Reports and JSON name a weight by its Hugging Face name.
impl Serialize for WeightId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hf_name())
    }
}

/// Projections a checkpoint may store stacked by rows (Phi-3): q, k, v in
/// that order; gate then up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    Qkv,
    GateUp,
}

impl Fused {
    pub fn hf_name(self, layer: usize) -> String {
        let module = match self {
            Self::Qkv => "self_attn.qkv_proj",
            Self::GateUp => "mlp.gate_up_proj",
        };
        format!("model.layers.{layer}.{module}.weight")
    }
}

/// A norm weight inside a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// Before attention (Llama's only pre-attention norm).
    Input,
    /// After attention: before the MLP in Llama, on the attention output in
    /// Gemma 2/3 and OLMo 2.
    PostAttention,
    /// Before the MLP (Gemma 2/3).
    PreFeedforward,
    /// On the MLP output (Gemma 2/3, OLMo 2).
    PostFeedforward,
    /// On the queries (per head or over the whole projection).
    Q,
    /// On the keys.
    K,
}

impl NormKind {
    fn hf_module(self) -> &'static str {
        match self {
            Self::Input => "input_layernorm",
            Self::PostAttention => "post_attention_layernorm",
            Self::PreFeedforward => "pre_feedforward_layernorm",
            Self::PostFeedforward => "post_feedforward_layernorm",
            Self::Q => "self_attn.q_norm",
            Self::K => "self_attn.k_norm",
        }
    }
}

/// A norm weight: of a layer, or the final one before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NormId {
    Final,
    Layer { layer: usize, kind: NormKind },
}

impl NormId {
    pub fn hf_name(self) -> String {
        match self {
            Self::Final => "model.norm.weight".into(),
            Self::Layer { layer, kind } => {
                format!("model.layers.{layer}.{}.weight", kind.hf_module())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_round_trip() {
        for id in [
            WeightId::Embed,
            WeightId::Head,
            WeightId::layer(0, Proj::Q),
            WeightId::layer(11, Proj::Up),
            WeightId::layer(29, Proj::Down),
        ] {
            assert_eq!(WeightId::from_hf_name(&id.hf_name()), Some(id));
        }
        assert_eq!(
            WeightId::layer(11, Proj::Gate).hf_name(),
            "model.layers.11.mlp.gate_proj.weight"
        );
        for bad in [
            "model.layers.1.input_layernorm.weight",
            "model.layers.x.mlp.up_proj.weight",
            "model.layers.01.mlp.up_proj.weight",
            "model.layers.1.mlp.up_proj.bias",
            "model.norm.weight",
        ] {
            assert_eq!(WeightId::from_hf_name(bad), None, "{bad}");
        }
        let e = "nope".parse::<WeightId>().unwrap_err();
        assert!(e.contains("names no weight matrix"), "{e}");
    }
}
