//! Normalized hyper-parameters from GGUF metadata (`{arch}.*` keys), with
//! what llama.cpp hard-codes instead of storing.

use std::collections::BTreeMap;
use std::path::Path;

use super::config::{Architecture, Keys, ModelConfig, RopeScaling};
use super::error::{CheckpointError, Result};
use super::gguf::{GgufHeader, GgufValue};
use super::layout;

fn meta_u64(meta: &BTreeMap<String, GgufValue>, key: &str) -> Option<u64> {
    meta.get(key).and_then(GgufValue::as_u64)
}

/// A value for messages: the number, else the variant as stored.
pub(super) fn shown(v: &GgufValue) -> String {
    match v {
        GgufValue::String(s) => format!("the string {s:?}"),
        GgufValue::Array(_, items) => format!("an array of {}", items.len()),
        GgufValue::F32(x) => format!("{x}"),
        GgufValue::F64(x) => format!("{x}"),
        GgufValue::Bool(b) => format!("{b}"),
        other => other
            .as_u64()
            .map_or_else(|| format!("{other:?}"), |n| n.to_string()),
    }
}

/// An optional integer key: absent is None, a value of another type (or a
/// negative one) is an error naming the key.
fn opt_u64(path: &Path, meta: &BTreeMap<String, GgufValue>, key: &str) -> Result<Option<u64>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            CheckpointError::malformed(
                path,
                format!("{key} must be a non-negative integer, got {}", shown(v)),
            )
        }),
    }
}

/// An optional number key (an integer or a float).
fn opt_f64(path: &Path, meta: &BTreeMap<String, GgufValue>, key: &str) -> Result<Option<f64>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v @ (GgufValue::String(_) | GgufValue::Array(..) | GgufValue::Bool(_))) => Err(
            CheckpointError::malformed(path, format!("{key} must be a number, got {}", shown(v))),
        ),
        Some(v) => Ok(v.as_f64()),
    }
}

/// An id of the vocabulary, which token ids are (u32).
fn opt_id(path: &Path, meta: &BTreeMap<String, GgufValue>, key: &str) -> Result<Option<u32>> {
    match opt_u64(path, meta, key)? {
        None => Ok(None),
        Some(v) => u32::try_from(v).map(Some).map_err(|_| {
            CheckpointError::malformed(path, format!("{key} = {v} is not a token id"))
        }),
    }
}

/// Normalized hyper-parameters from GGUF metadata (`{arch}.*` keys).
pub(super) fn gguf_config(path: &Path, header: &GgufHeader) -> Result<ModelConfig> {
    let meta = &header.metadata;
    let arch_name = match meta.get("general.architecture") {
        None => {
            return Err(CheckpointError::malformed(
                path,
                "no general.architecture in the metadata",
            ))
        }
        Some(v) => v.as_str().ok_or_else(|| {
            CheckpointError::malformed(
                path,
                format!("general.architecture must be a string, got {}", shown(v)),
            )
        })?,
    };
    let architecture = Architecture::from_name(arch_name).ok_or_else(|| {
        CheckpointError::unsupported(
            path,
            format!(
                "architecture {arch_name:?} (supported: {})",
                Architecture::SUPPORTED
            ),
        )
    })?;
    // Phi-3's 128K models carry LongRoPE's factors as tensors.
    if let Some(t) = header
        .tensors
        .iter()
        .find(|t| t.name.starts_with("rope_factors_"))
    {
        return Err(CheckpointError::unsupported(
            path,
            format!(
                "tensor {}: LongRoPE scaling is not implemented (rope type longrope)",
                t.name
            ),
        ));
    }
    let key = |k: &str| format!("{arch_name}.{k}");
    let opt = |k: &str| opt_u64(path, meta, &key(k)).map(|v| v.map(|v| v as usize));
    let need = |k: &str| {
        opt(k)?.ok_or_else(|| CheckpointError::malformed(path, format!("missing {}", key(k))))
    };
    let d_model = need("embedding_length")?;
    let n_heads = need("attention.head_count")?;
    if n_heads == 0 {
        return Err(CheckpointError::malformed(
            path,
            format!(
                "{} is 0; it must be at least 1",
                key("attention.head_count")
            ),
        ));
    }
    let n_kv_heads = opt("attention.head_count_kv")?.unwrap_or(n_heads);
    let head_dim = match opt("attention.key_length")? {
        Some(h) => h,
        None if d_model.is_multiple_of(n_heads) => d_model / n_heads,
        None => {
            return Err(CheckpointError::malformed(
                path,
                format!(
                    "{} {d_model} is not a multiple of {} {n_heads} (and no {} is given)",
                    key("embedding_length"),
                    key("attention.head_count"),
                    key("attention.key_length")
                ),
            ))
        }
    };
    let vocab_size = match opt("vocab_size")? {
        Some(v) => v,
        None => meta
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(<[_]>::len)
            .or_else(|| {
                header
                    .tensors
                    .iter()
                    .find(|t| t.name == "token_embd.weight")
                    .and_then(|t| t.ggml_dims.get(1).map(|&d| d as usize))
            })
            .ok_or_else(|| CheckpointError::malformed(path, "cannot tell the vocabulary size"))?,
    };
    let rope_scaling = if header.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        Some(RopeScaling::FrequencyFactors {
            tensor: "rope_freqs.weight".into(),
        })
    } else {
        match meta
            .get(&key("rope.scaling.type"))
            .and_then(GgufValue::as_str)
        {
            Some("linear") => Some(RopeScaling::Linear {
                factor: opt_f64(path, meta, &key("rope.scaling.factor"))?.unwrap_or(1.0),
            }),
            Some("none") | None => None,
            Some(other) => {
                return Err(CheckpointError::unsupported(
                    path,
                    format!("rope scaling type {other:?}"),
                ))
            }
        }
    };
    if let Some(n) = opt_u64(path, meta, &key("expert_count"))?.filter(|&n| n > 1) {
        return Err(CheckpointError::unsupported(
            path,
            format!(
                "{} = {n}: mixture-of-experts layers are not implemented",
                key("expert_count")
            ),
        ));
    }
    let mut config = ModelConfig {
        architecture,
        n_layers: need("block_count")?,
        d_model,
        d_ff: need("feed_forward_length")?,
        n_heads,
        n_kv_heads,
        head_dim,
        rope_theta: opt_f64(path, meta, &key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
        norm_eps: opt_f64(path, meta, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        vocab_size,
        tied_embeddings: !header.tensors.iter().any(|t| t.name == "output.weight"),
        bos_token_id: opt_id(path, meta, "tokenizer.ggml.bos_token_id")?,
        eos_token_ids: opt_id(path, meta, "tokenizer.ggml.eos_token_id")?
            .map(|v| vec![v])
            .unwrap_or_default(),
        max_position_embeddings: opt("context_length")?.unwrap_or(2048),
        hidden_act: if architecture.is_gemma() {
            "gelu_pytorch_tanh".into()
        } else {
            "silu".into()
        },
        attention: layout::AttentionLayout::default(),
    };
    config.attention = gguf_attention(path, meta, &key, &config)?;
    config.check_sane(path, Keys::Gguf(arch_name))?;
    Ok(config)
}

/// Windows, local RoPE and Gemma's scale from GGUF metadata, with what
/// llama.cpp hard-codes instead of storing: Gemma 3's sliding pattern
/// (every 6th layer global unless `attention.sliding_window_pattern` says
/// otherwise), its local RoPE base (10,000 unless `rope.freq_base_swa`
/// says otherwise) and Gemma's attention scale: the GGUF has no
/// query_pre_attn_scalar, and llama.cpp takes 1/sqrt(head_dim), or
/// 1/sqrt(d_model / heads) for the 27B models (46 layers of Gemma 2, 62 of
/// Gemma 3). A partial rotary count (`rope.dimension_count` below
/// head_dim) is Phi-3's `partial_rotary_factor`; the other families rotate
/// whole heads and refuse it. Phi-3's stored sliding window is applied to
/// every layer, as transformers does (llama.cpp ignores it).
fn gguf_attention(
    path: &Path,
    meta: &BTreeMap<String, GgufValue>,
    key: &dyn Fn(&str) -> String,
    c: &ModelConfig,
) -> Result<layout::AttentionLayout> {
    let f64_of = |k: &str| opt_f64(path, meta, &key(k));
    let rotary = meta_u64(meta, &key("rope.dimension_count")).filter(|&n| n as usize != c.head_dim);
    let partial = match rotary {
        Some(n)
            if c.architecture == Architecture::Phi3
                && n > 0
                && n % 2 == 0
                && (n as usize) < c.head_dim =>
        {
            Some(n as f64 / c.head_dim as f64)
        }
        _ => None,
    };
    if let (Some(n), None) = (rotary, partial) {
        return Err(CheckpointError::unsupported(
            path,
            format!(
                "{} = {n} rotates part of each head of {}; not implemented for {}",
                key("rope.dimension_count"),
                c.head_dim,
                c.architecture.name()
            ),
        ));
    }
    let window = || meta_u64(meta, &key("attention.sliding_window")).map_or(4096, |w| w as usize);
    let scale = match (c.architecture, c.n_layers) {
        (Architecture::Gemma2, 46) | (Architecture::Gemma3, 62) => (c.d_model / c.n_heads) as f64,
        _ => c.head_dim as f64,
    };
    Ok(match c.architecture {
        Architecture::Gemma3 => {
            let pattern = match meta.get(&key("attention.sliding_window_pattern")) {
                None => layout::LayerPattern::EveryNthFull(6),
                Some(v) => match (v.as_u64(), v.as_array()) {
                    (Some(n), _) if n > 0 => layout::LayerPattern::EveryNthFull(n as usize),
                    (_, Some(flags)) if flags.len() == c.n_layers => {
                        layout::LayerPattern::Explicit(
                            flags
                                .iter()
                                .map(|f| match f.as_bool() {
                                    Some(true) => Ok(layout::AttentionKind::Sliding),
                                    Some(false) => Ok(layout::AttentionKind::Full),
                                    None => Err(()),
                                })
                                .collect::<std::result::Result<_, ()>>()
                                .map_err(|_| {
                                    CheckpointError::malformed(
                                        path,
                                        format!(
                                            "{} holds a non-boolean",
                                            key("attention.sliding_window_pattern")
                                        ),
                                    )
                                })?,
                        )
                    }
                    _ => {
                        return Err(CheckpointError::malformed(
                            path,
                            format!(
                                "{} is neither a period nor one flag per layer",
                                key("attention.sliding_window_pattern")
                            ),
                        ))
                    }
                },
            };
            layout::AttentionLayout {
                sliding_window: Some(window()),
                pattern,
                local_rope_theta: Some(f64_of("rope.freq_base_swa")?.unwrap_or(10_000.0)),
                query_pre_attn_scalar: Some(scale),
                final_logit_softcapping: f64_of("final_logit_softcapping")?,
                ..Default::default()
            }
        }
        // llama.cpp's Gemma 2: even layers slide; caps 50 and 30 unless stored.
        Architecture::Gemma2 => layout::AttentionLayout {
            sliding_window: Some(window()),
            pattern: layout::LayerPattern::EvenSliding,
            query_pre_attn_scalar: Some(scale),
            attn_logit_softcapping: Some(f64_of("attn_logit_softcapping")?.unwrap_or(50.0)),
            final_logit_softcapping: Some(f64_of("final_logit_softcapping")?.unwrap_or(30.0)),
            ..Default::default()
        },
        Architecture::Phi3 => {
            let sliding_window = meta_u64(meta, &key("attention.sliding_window"))
                .filter(|&w| w > 0)
                .map(|w| w as usize);
            layout::AttentionLayout {
                sliding_window,
                pattern: if sliding_window.is_some() {
                    layout::LayerPattern::AllSliding
                } else {
                    layout::LayerPattern::AllFull
                },
                partial_rotary_factor: partial.unwrap_or(1.0),
                ..Default::default()
            }
        }
        _ => layout::AttentionLayout::default(),
    })
}
