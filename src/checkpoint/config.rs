//! Normalized hyper-parameters, whatever the checkpoint format.
//!
//! Hugging Face `config.json` and GGUF metadata name the same facts
//! differently; the rest of mwtop only ever sees [`ModelConfig`].

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::error::{CheckpointError, Result};
use super::layout::{self, AttentionLayout};
use super::weight_id::{Fused, NormId, NormKind, Proj, WeightId};

/// Model families mwtop knows how to name and (in the model layer) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Olmo2,
    Gemma2,
    Gemma3,
}

impl Architecture {
    /// From a Hugging Face `model_type` (or a GGUF `general.architecture`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "phi3" => Some(Self::Phi3),
            "olmo2" => Some(Self::Olmo2),
            "gemma2" => Some(Self::Gemma2),
            "gemma3" | "gemma3_text" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// The `model_type` written to a converted `config.json`.
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
            Self::Olmo2 => "olmo2",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3_text",
        }
    }

    /// The class name Hugging Face transformers instantiates.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Phi3 => "Phi3ForCausalLM",
            Self::Olmo2 => "Olmo2ForCausalLM",
            Self::Gemma2 => "Gemma2ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
            Self::Olmo2 => "olmo2",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Gemma's norms scale by (1 + w), its embeddings by sqrt(d_model).
    pub fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    /// Every family mwtop reads, for error messages.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, phi3, olmo2, gemma2, gemma3";
}

/// RoPE frequency scaling, as far as the checkpoint states it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.x: `factor`, `low_freq_factor`, `high_freq_factor`, original context.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// GGUF files store llama3 scaling as precomputed per-frequency divisors.
    FrequencyFactors { tensor: String },
}

/// How the keys of a format name each setting, for messages: `config.json`'s
/// names, or a GGUF's `{arch}.*` keys.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keys<'a> {
    Hf,
    Gguf(&'a str),
}

impl Keys<'_> {
    /// The key that holds `field` (named as in config.json).
    pub(crate) fn name(self, field: &str) -> String {
        let Keys::Gguf(arch) = self else {
            return field.to_string();
        };
        let key = match field {
            "num_hidden_layers" => "block_count",
            "hidden_size" => "embedding_length",
            "intermediate_size" => "feed_forward_length",
            "num_attention_heads" => "attention.head_count",
            "num_key_value_heads" => "attention.head_count_kv",
            "head_dim" => "attention.key_length",
            "max_position_embeddings" => "context_length",
            "rope_theta" => "rope.freq_base",
            "rope_local_base_freq" => "rope.freq_base_swa",
            "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
            "sliding_window" => "attention.sliding_window",
            "rope_scaling.factor" => "rope.scaling.factor",
            other => other,
        };
        format!("{arch}.{key}")
    }
}

/// The longest context a configuration may claim (Llama 4 Scout claims 10M).
pub const MAX_CONTEXT: usize = 1 << 24;

/// Everything the forward pass and the UI need to know about the shape of a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub norm_eps: f64,
    pub vocab_size: usize,
    pub tied_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    /// Sliding windows per layer and the rotary settings beyond theta and scaling.
    pub attention: AttentionLayout,
}

pub(super) fn field<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

pub(super) fn usize_field(path: &Path, cfg: &Value, key: &str) -> Result<Option<usize>> {
    match field(cfg, key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            CheckpointError::malformed(
                path,
                format!("{key} must be a non-negative integer, got {v}"),
            )
        }),
    }
}

fn required_usize(path: &Path, cfg: &Value, key: &str) -> Result<usize> {
    usize_field(path, cfg, key)?
        .ok_or_else(|| CheckpointError::malformed(path, format!("missing {key}")))
}

fn f64_field(path: &Path, cfg: &Value, key: &str) -> Result<Option<f64>> {
    match field(cfg, key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            CheckpointError::malformed(path, format!("{key} must be a number, got {v}"))
        }),
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json` (already read into `text`).
    pub fn from_hf_json(path: &Path, text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| CheckpointError::malformed(path, format!("invalid JSON: {e}")))?;
        if !root.is_object() {
            return Err(CheckpointError::malformed(path, "expected a JSON object"));
        }
        // Gemma 3 multimodal configs nest the language model under text_config.
        let cfg = field(&root, "text_config").unwrap_or(&root);
        let model_type = field(&root, "model_type")
            .or_else(|| field(cfg, "model_type"))
            .and_then(Value::as_str)
            .ok_or_else(|| CheckpointError::malformed(path, "missing model_type"))?;
        let architecture = Architecture::from_name(model_type).ok_or_else(|| {
            CheckpointError::unsupported(
                path,
                format!(
                    "architecture {model_type:?} (supported: {})",
                    Architecture::SUPPORTED
                ),
            )
        })?;
        let d_model = required_usize(path, cfg, "hidden_size")?;
        let n_heads = required_usize(path, cfg, "num_attention_heads")?;
        if n_heads == 0 {
            return Err(CheckpointError::malformed(path, "num_attention_heads is 0"));
        }
        let n_kv_heads = usize_field(path, cfg, "num_key_value_heads")?.unwrap_or(n_heads);
        // Each family's own default (Qwen3Config: 128, Gemma: 256).
        let family_head_dim = match architecture {
            Architecture::Qwen3 => Some(128),
            a if a.is_gemma() => Some(256),
            _ => None,
        };
        let head_dim = match (usize_field(path, cfg, "head_dim")?, family_head_dim) {
            (Some(h), _) | (None, Some(h)) => h,
            (None, None) if d_model.is_multiple_of(n_heads) => d_model / n_heads,
            (None, None) => {
                return Err(CheckpointError::malformed(
                    path,
                    format!(
                        "hidden_size {d_model} is not a multiple of num_attention_heads {n_heads} (and no head_dim is given)"
                    ),
                ))
            }
        };
        refuse_experts(path, cfg)?;
        let n_layers = required_usize(path, cfg, "num_hidden_layers")?;
        let mut attention = AttentionLayout::default();
        let rope = layout::parse_rope(path, architecture, cfg, &mut attention)?;
        layout::parse_windows(path, architecture, cfg, n_layers, &mut attention)?;
        layout::parse_gemma(path, architecture, cfg, &mut attention)?;
        let default_tied = architecture.is_gemma();
        let tied_embeddings = field(&root, "tie_word_embeddings")
            .or_else(|| field(cfg, "tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(default_tied);
        let bos = token_ids(field(&root, "bos_token_id").or_else(|| field(cfg, "bos_token_id")));
        let eos = token_ids(field(&root, "eos_token_id").or_else(|| field(cfg, "eos_token_id")));
        // Gemma reads hidden_activation (hub configs also carry an unused hidden_act).
        let act_key = if architecture.is_gemma() {
            "hidden_activation"
        } else {
            "hidden_act"
        };
        let hidden_act = field(cfg, act_key)
            .and_then(Value::as_str)
            .unwrap_or(if architecture.is_gemma() {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            })
            .to_string();
        let default_eps = match architecture {
            Architecture::Phi3 | Architecture::Olmo2 => 1e-5,
            _ => 1e-6,
        };
        let config = Self {
            architecture,
            n_layers,
            d_model,
            d_ff: required_usize(path, cfg, "intermediate_size")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            norm_eps: f64_field(path, cfg, "rms_norm_eps")?.unwrap_or(default_eps),
            vocab_size: required_usize(path, cfg, "vocab_size")?,
            tied_embeddings,
            bos_token_id: bos.first().copied(),
            eos_token_ids: eos,
            max_position_embeddings: usize_field(path, cfg, "max_position_embeddings")?
                .unwrap_or(2048),
            hidden_act,
            attention,
        };
        config.check_sane(path, Keys::Hf)?;
        Ok(config)
    }

    /// Rejects values no real model has, before anything is sized from them:
    /// sizes of 0, heads that do not divide, a context of 0 or beyond any
    /// model's, and hyper-parameters that are NaN, infinite or out of range
    /// (each named by its key in `keys`' format).
    pub(crate) fn check_sane(&self, path: &Path, keys: Keys) -> Result<()> {
        let bad = |m: String| Err(CheckpointError::malformed(path, m));
        let k = |field: &str| keys.name(field);
        for (field, v) in [
            ("num_hidden_layers", self.n_layers),
            ("hidden_size", self.d_model),
            ("intermediate_size", self.d_ff),
            ("vocab_size", self.vocab_size),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{} is 0; it must be at least 1", k(field)));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads ({}) are not a multiple of {} key/value heads ({})",
                self.n_heads,
                k("num_attention_heads"),
                self.n_kv_heads,
                k("num_key_value_heads")
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} ({}) must be even",
                self.head_dim,
                k("head_dim")
            ));
        }
        if self.max_position_embeddings > MAX_CONTEXT {
            return bad(format!(
                "context {} ({}) is beyond any model's ({MAX_CONTEXT} at most)",
                self.max_position_embeddings,
                k("max_position_embeddings")
            ));
        }
        let thetas = [
            ("rope_theta", Some(self.rope_theta)),
            ("rope_local_base_freq", self.attention.local_rope_theta),
        ];
        for (field, t) in thetas {
            if let Some(t) = t.filter(|t| !(t.is_finite() && *t > 1.0)) {
                return bad(format!(
                    "{} = {t}: a RoPE base must be a finite number above 1",
                    k(field)
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return bad(format!(
                "{} = {}: the norm epsilon must be a finite number in (0, 1)",
                k("rms_norm_eps"),
                self.norm_eps
            ));
        }
        let positive = |field: &str, v: f64| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(format!(
                    "{} = {v} must be a finite positive number",
                    k(field)
                ))
            }
        };
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => positive("rope_scaling.factor", *factor)?,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                if *original_max_position_embeddings == 0 {
                    return bad("rope_scaling.original_max_position_embeddings is 0".into());
                }
                if high_freq_factor <= low_freq_factor {
                    return bad(format!(
                        "rope_scaling.high_freq_factor {high_freq_factor} must be above low_freq_factor {low_freq_factor}"
                    ));
                }
            }
            Some(RopeScaling::FrequencyFactors { .. }) | None => {}
        }
        let a = &self.attention;
        for (field, v) in [
            ("query_pre_attn_scalar", a.query_pre_attn_scalar),
            ("attn_logit_softcapping", a.attn_logit_softcapping),
            ("final_logit_softcapping", a.final_logit_softcapping),
        ] {
            if let Some(v) = v {
                positive(field, v)?;
            }
        }
        if a.sliding_window == Some(0) {
            return bad(format!("{} is 0", k("sliding_window")));
        }
        if !(a.partial_rotary_factor > 0.0 && a.partial_rotary_factor <= 1.0) {
            return bad(format!(
                "partial_rotary_factor {} is not in (0, 1]",
                a.partial_rotary_factor
            ));
        }
        Ok(())
    }

    /// Bounds the sizes by what the tensors can hold, before anything is
    /// sized from them, so that a hostile header cannot ask for a huge
    /// allocation: every layer needs tensors of its own, no matrix the
    /// sizes imply may hold more elements than the whole checkpoint, and
    /// tensors of layers past `n_layers` mean the count is wrong. The exact
    /// shapes are checked afterwards. `tensors` yields (name, name in the
    /// file, shape).
    pub(crate) fn check_fits<'a>(
        &self,
        keys: Keys,
        tensors: impl Iterator<Item = (&'a str, &'a str, &'a [usize])> + Clone,
    ) -> std::result::Result<(), String> {
        let count = tensors.clone().count();
        if self.n_layers > count {
            return Err(format!(
                "{} layers ({}), but the checkpoint holds only {count} tensors",
                self.n_layers,
                keys.name("num_hidden_layers")
            ));
        }
        let total: u128 = tensors
            .clone()
            .map(|(_, _, shape)| shape.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        let d = self.d_model as u128;
        for (what, key, rows) in [
            ("vocab", "vocab_size", self.vocab_size as u128),
            ("d_ff", "intermediate_size", self.d_ff as u128),
            (
                "heads x head_dim",
                "num_attention_heads",
                (self.n_heads as u128).saturating_mul(self.head_dim as u128),
            ),
            (
                "kv heads x head_dim",
                "num_key_value_heads",
                (self.n_kv_heads as u128).saturating_mul(self.head_dim as u128),
            ),
        ] {
            if rows.saturating_mul(d) > total {
                return Err(format!(
                    "{what} {rows} ({}) x d_model {d} is more than the checkpoint's {total} elements",
                    keys.name(key)
                ));
            }
        }
        let beyond = tensors.filter_map(|(name, stored, _)| {
            let rest = name.strip_prefix("model.layers.")?;
            let layer: usize = rest.split('.').next()?.parse().ok()?;
            (layer >= self.n_layers).then_some((layer, name, stored))
        });
        if let Some((_, name, stored)) = beyond.min() {
            let shown = if name == stored {
                name.to_string()
            } else {
                format!("{stored} ({name})")
            };
            return Err(format!(
                "{} layers ({}), but the checkpoint has {shown}",
                self.n_layers,
                keys.name("num_hidden_layers")
            ));
        }
        Ok(())
    }

    /// The norm weights of each layer, with their lengths: where they sit
    /// differs by family (Llama: before attention and MLP; Gemma: four; OLMo 2:
    /// on the sublayer outputs only; QK-norms per head or over the projection).
    pub fn layer_norms(&self) -> Vec<(NormKind, usize)> {
        let d = self.d_model;
        let (q, k) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        let hd = self.head_dim;
        use NormKind::*;
        match self.architecture {
            Architecture::Olmo2 => vec![(PostAttention, d), (PostFeedforward, d), (Q, q), (K, k)],
            Architecture::Gemma2 => vec![
                (Input, d),
                (PostAttention, d),
                (PreFeedforward, d),
                (PostFeedforward, d),
            ],
            Architecture::Gemma3 => vec![
                (Input, d),
                (PostAttention, d),
                (PreFeedforward, d),
                (PostFeedforward, d),
                (Q, hd),
                (K, hd),
            ],
            Architecture::Qwen3 => vec![(Input, d), (PostAttention, d), (Q, hd), (K, hd)],
            _ => vec![(Input, d), (PostAttention, d)],
        }
    }

    /// Every tensor the configuration implies, with its shape, for the
    /// parameter count and the shape checks.
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.d_model;
        let mut out = vec![
            (WeightId::Embed.hf_name(), vec![self.vocab_size, d]),
            (NormId::Final.hf_name(), vec![d]),
        ];
        if !self.tied_embeddings {
            out.push((WeightId::Head.hf_name(), vec![self.vocab_size, d]));
        }
        let q = self.n_heads * self.head_dim;
        let kv = self.n_kv_heads * self.head_dim;
        let norms = self.layer_norms();
        for layer in 0..self.n_layers {
            let id = |proj| WeightId::layer(layer, proj).hf_name();
            // In this order: the synthetic checkpoints draw their weights in it.
            if self.architecture == Architecture::Phi3 {
                out.push((Fused::Qkv.hf_name(layer), vec![q + 2 * kv, d]));
                out.push((id(Proj::O), vec![d, q]));
                out.push((Fused::GateUp.hf_name(layer), vec![2 * self.d_ff, d]));
            } else {
                out.push((id(Proj::Q), vec![q, d]));
                out.push((id(Proj::K), vec![kv, d]));
                out.push((id(Proj::V), vec![kv, d]));
                out.push((id(Proj::O), vec![d, q]));
                out.push((id(Proj::Gate), vec![self.d_ff, d]));
                out.push((id(Proj::Up), vec![self.d_ff, d]));
            }
            out.push((id(Proj::Down), vec![d, self.d_ff]));
            for &(kind, len) in &norms {
                out.push((NormId::Layer { layer, kind }.hf_name(), vec![len]));
            }
        }
        out
    }

    /// The `config.json` a converted checkpoint carries, as transformers reads it.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.hf_model_type(),
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tied_embeddings,
            "attention_bias": self.architecture == Architecture::Qwen2,
            "mlp_bias": false,
            "torch_dtype": torch_dtype,
        });
        if let Some(bos) = self.bos_token_id {
            v["bos_token_id"] = bos.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = (*one).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        match &self.rope_scaling {
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                v["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3", "factor": factor,
                    "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
            Some(RopeScaling::Linear { factor }) => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::FrequencyFactors { .. }) | None => {}
        }
        self.layout_to_hf_json(&mut v);
        v
    }

    /// Windows, local RoPE and Gemma's settings, written so that reading
    /// the file back (here or in transformers) gives the same model.
    fn layout_to_hf_json(&self, v: &mut Value) {
        let a = &self.attention;
        match a.sliding_window {
            Some(w) => {
                v["sliding_window"] = w.into();
                v["use_sliding_window"] = true.into();
                let kinds: Vec<&str> = (0..self.n_layers)
                    .map(|i| match a.kind(i) {
                        layout::AttentionKind::Full => "full_attention",
                        layout::AttentionKind::Sliding => "sliding_attention",
                    })
                    .collect();
                v["layer_types"] = kinds.into();
            }
            None => {
                v["sliding_window"] = Value::Null;
                v["use_sliding_window"] = false.into();
            }
        }
        if let Some(t) = a.local_rope_theta {
            v["rope_local_base_freq"] = t.into();
        }
        if a.partial_rotary_factor != 1.0 {
            v["partial_rotary_factor"] = a.partial_rotary_factor.into();
        }
        if self.architecture.is_gemma() {
            v["hidden_activation"] = self.hidden_act.clone().into();
            let opt = |x: Option<f64>| x.map_or(Value::Null, Value::from);
            v["query_pre_attn_scalar"] = opt(a.query_pre_attn_scalar);
            v["attn_logit_softcapping"] = opt(a.attn_logit_softcapping);
            v["final_logit_softcapping"] = opt(a.final_logit_softcapping);
        }
    }
}

/// Mixture-of-experts layers route each token through some of many MLPs:
/// a different forward, refused by the key that asks for it.
fn refuse_experts(path: &Path, cfg: &Value) -> Result<()> {
    for key in [
        "num_local_experts",
        "num_experts",
        "n_routed_experts",
        "moe_num_experts",
    ] {
        if let Some(n) = field(cfg, key).and_then(Value::as_u64).filter(|&n| n > 1) {
            return Err(CheckpointError::unsupported(
                path,
                format!("{key} = {n}: mixture-of-experts layers are not implemented"),
            ));
        }
    }
    Ok(())
}
