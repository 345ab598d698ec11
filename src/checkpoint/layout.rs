//! Which keys each layer's queries see (full causal attention or a sliding
//! window), and how positions rotate them (RoPE base, scaling, partial
//! rotary), read from a Hugging Face `config.json` in both layouts found in
//! the wild: the classic hub keys (`rope_theta`, `rope_scaling`,
//! `rope_local_base_freq`, `sliding_window`, `use_sliding_window`,
//! `max_window_layers`) and transformers >= 5's `rope_parameters` (also
//! nested per layer type) with `layer_types`. Each family's defaults are
//! transformers' own. A setting that changes the math and that mwtop does
//! not compute is refused with the key's name. Gemma's attention scale and
//! soft caps live here too.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::config::{field, usize_field, Architecture, RopeScaling};
use super::error::{CheckpointError, Result};

/// What one layer's attention sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Every earlier position (causal).
    Full,
    /// The last `sliding_window` positions, itself included.
    Sliding,
}

/// Which layers slide, without a list sized by a header's layer count.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerPattern {
    AllFull,
    AllSliding,
    /// Layers from this index on slide (Qwen2/3's `max_window_layers`).
    SlidingFrom(usize),
    /// Layer i is full when (i + 1) is a multiple of n, else sliding (Gemma 3).
    EveryNthFull(usize),
    /// Even layers slide, odd ones are full (Gemma 2).
    EvenSliding,
    /// One kind per layer (`layer_types`).
    Explicit(Vec<AttentionKind>),
}

/// The attention layout of a model: windows and rotary settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionLayout {
    /// Keys a sliding layer's query sees: positions j with i - w < j <= i.
    pub sliding_window: Option<usize>,
    pub pattern: LayerPattern,
    /// RoPE base of sliding layers when it differs from the global one (Gemma 3).
    pub local_rope_theta: Option<f64>,
    /// Fraction of each head's dims that RoPE rotates (Phi-3: the first ones).
    pub partial_rotary_factor: f64,
    /// Attention scores are scaled by this^-0.5 instead of head_dim^-0.5 (Gemma).
    pub query_pre_attn_scalar: Option<f64>,
    /// Scores become tanh(s / cap) * cap before the mask (Gemma 2).
    pub attn_logit_softcapping: Option<f64>,
    /// Output logits become tanh(l / cap) * cap (Gemma 2, some Gemma 3).
    pub final_logit_softcapping: Option<f64>,
}

impl Default for AttentionLayout {
    fn default() -> Self {
        Self {
            sliding_window: None,
            pattern: LayerPattern::AllFull,
            local_rope_theta: None,
            partial_rotary_factor: 1.0,
            query_pre_attn_scalar: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
        }
    }
}

impl AttentionLayout {
    pub fn kind(&self, layer: usize) -> AttentionKind {
        if self.sliding_window.is_none() {
            return AttentionKind::Full;
        }
        let sliding = match &self.pattern {
            LayerPattern::AllFull => false,
            LayerPattern::AllSliding => true,
            LayerPattern::SlidingFrom(first) => layer >= *first,
            LayerPattern::EveryNthFull(n) => !(layer + 1).is_multiple_of((*n).max(1)),
            LayerPattern::EvenSliding => layer.is_multiple_of(2),
            LayerPattern::Explicit(kinds) => kinds.get(layer) == Some(&AttentionKind::Sliding),
        };
        if sliding {
            AttentionKind::Sliding
        } else {
            AttentionKind::Full
        }
    }

    /// The window of `layer`: None for full attention.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.kind(layer) {
            AttentionKind::Full => None,
            AttentionKind::Sliding => self.sliding_window,
        }
    }
}

/// The rotary settings of the global layers, as [`parse_rope`] reads them.
pub struct GlobalRope {
    pub theta: f64,
    pub scaling: Option<RopeScaling>,
}

fn number(path: &Path, v: Option<&Value>, key: &str) -> Result<Option<f64>> {
    match v {
        None => Ok(None),
        Some(x) => x.as_f64().map(Some).ok_or_else(|| {
            CheckpointError::malformed(path, format!("{key} must be a number, got {x}"))
        }),
    }
}

/// RoPE settings. As transformers reads them: a legacy `rope_scaling`
/// wins over `rope_parameters`; a dict keyed by layer type holds the
/// global (`full_attention`) and local (`sliding_attention`) settings.
pub fn parse_rope(
    path: &Path,
    arch: Architecture,
    cfg: &Value,
    layout: &mut AttentionLayout,
) -> Result<GlobalRope> {
    // Gemma3TextConfig's defaults: 1e6 on full layers, 10,000 on sliding ones.
    let (default_theta, default_local) = match arch {
        Architecture::Gemma3 => (1_000_000.0, Some(10_000.0)),
        _ => (10_000.0, None),
    };
    let (key, params) = match (field(cfg, "rope_scaling"), field(cfg, "rope_parameters")) {
        (Some(p), _) => ("rope_scaling", Some(p)),
        (None, Some(p)) => ("rope_parameters", Some(p)),
        (None, None) => ("rope_parameters", None),
    };
    if let Some(p) = params.filter(|p| !p.is_object()) {
        return Err(CheckpointError::malformed(
            path,
            format!("{key} must be an object, got {p}"),
        ));
    }
    let nested = params
        .is_some_and(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
    let (global, global_key, local) = if nested {
        let p = params.expect("nested implies present");
        (
            field(p, "full_attention"),
            format!("{key}.full_attention"),
            field(p, "sliding_attention"),
        )
    } else {
        (params, key.to_string(), None)
    };
    let nested_theta_key = format!("{global_key}.rope_theta");
    let (theta, theta_key) = match number(
        path,
        global.and_then(|g| field(g, "rope_theta")),
        &nested_theta_key,
    )? {
        Some(t) => (t, nested_theta_key),
        None => (
            number(path, field(cfg, "rope_theta"), "rope_theta")?.unwrap_or(default_theta),
            "rope_theta".to_string(),
        ),
    };
    let scaling = match global {
        Some(g) => rope_scaling(path, g, &global_key)?,
        None => None,
    };
    let local_key = format!("{key}.sliding_attention");
    layout.local_rope_theta = match local {
        Some(l) => {
            if rope_scaling(path, l, &local_key)?.is_some() {
                return Err(CheckpointError::unsupported(
                    path,
                    format!("{local_key}: scaled RoPE on sliding layers is not implemented"),
                ));
            }
            number(
                path,
                field(l, "rope_theta"),
                &format!("{local_key}.rope_theta"),
            )?
            .or(default_local)
        }
        None => number(
            path,
            field(cfg, "rope_local_base_freq"),
            "rope_local_base_freq",
        )?
        .or(default_local),
    };
    let prf = match global.and_then(|g| field(g, "partial_rotary_factor")) {
        Some(v) => number(
            path,
            Some(v),
            &format!("{global_key}.partial_rotary_factor"),
        )?,
        None => number(
            path,
            field(cfg, "partial_rotary_factor"),
            "partial_rotary_factor",
        )?,
    };
    let prf = prf.unwrap_or(1.0);
    if !(prf > 0.0 && prf <= 1.0) {
        return Err(CheckpointError::malformed(
            path,
            format!("partial_rotary_factor {prf} is not in (0, 1]"),
        ));
    }
    layout.partial_rotary_factor = prf;
    for (key, t) in [
        (theta_key.as_str(), Some(theta)),
        ("the sliding layers' rope_theta", layout.local_rope_theta),
    ] {
        if let Some(t) = t.filter(|t| !(t.is_finite() && *t > 1.0)) {
            return Err(CheckpointError::malformed(
                path,
                format!("{key} = {t}: a RoPE base of {t} is not a positive number above 1"),
            ));
        }
    }
    Ok(GlobalRope { theta, scaling })
}

/// One RoPE parameter set's scaling; `key` names it in errors.
fn rope_scaling(path: &Path, rs: &Value, key: &str) -> Result<Option<RopeScaling>> {
    let kind = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| rs.get(k).and_then(Value::as_f64);
    let factor = num("factor").unwrap_or(1.0);
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: rs
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(8192) as usize,
        })),
        other => Err(CheckpointError::unsupported(
            path,
            format!("{key}.rope_type {other:?} is not implemented (mwtop computes default, linear and llama3)"),
        )),
    }
}

fn layer_types(path: &Path, cfg: &Value, n_layers: usize) -> Result<Option<Vec<AttentionKind>>> {
    let Some(v) = field(cfg, "layer_types") else {
        return Ok(None);
    };
    let items = v.as_array().ok_or_else(|| {
        CheckpointError::malformed(path, format!("layer_types must be a list, got {v}"))
    })?;
    if items.len() != n_layers {
        return Err(CheckpointError::inconsistent(
            path,
            format!(
                "layer_types lists {} layers, num_hidden_layers is {n_layers}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(AttentionKind::Full),
            Some("sliding_attention") => Ok(AttentionKind::Sliding),
            _ => Err(CheckpointError::unsupported(
                path,
                format!(
                    "layer_types entry {t} (mwtop computes full_attention and sliding_attention)"
                ),
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Sliding windows, as each family's transformers config defines them.
pub fn parse_windows(
    path: &Path,
    arch: Architecture,
    cfg: &Value,
    n_layers: usize,
    layout: &mut AttentionLayout,
) -> Result<()> {
    let window = usize_field(path, cfg, "sliding_window")?;
    let (window, pattern) = match arch {
        // LlamaModel never reads these keys.
        Architecture::Llama => (None, LayerPattern::AllFull),
        // MistralConfig's default is 4096 when the key is absent; null is full attention.
        Architecture::Mistral => {
            let w = match cfg.get("sliding_window") {
                None => Some(4096),
                Some(_) => window,
            };
            (w, LayerPattern::AllSliding)
        }
        // Qwen2Config: a window only with use_sliding_window, and then only
        // from layer max_window_layers on, unless layer_types says otherwise.
        Architecture::Qwen2 | Architecture::Qwen3 => {
            let on = field(cfg, "use_sliding_window")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let first = usize_field(path, cfg, "max_window_layers")?.unwrap_or(28);
            let pattern = match layer_types(path, cfg, n_layers)? {
                Some(kinds) => LayerPattern::Explicit(kinds),
                None => LayerPattern::SlidingFrom(first),
            };
            (on.then(|| window.unwrap_or(4096)), pattern)
        }
        // Phi3Config: no window unless sliding_window is set; then every layer.
        Architecture::Phi3 => (window, LayerPattern::AllSliding),
        Architecture::Olmo2 => (None, LayerPattern::AllFull),
        // Gemma2Config: even layers slide over 4096 keys unless told otherwise.
        Architecture::Gemma2 => {
            let pattern = match layer_types(path, cfg, n_layers)? {
                Some(kinds) => LayerPattern::Explicit(kinds),
                None => LayerPattern::EvenSliding,
            };
            (Some(window.unwrap_or(4096)), pattern)
        }
        Architecture::Gemma3 => {
            let every = usize_field(path, cfg, "sliding_window_pattern")?
                .or(usize_field(path, cfg, "_sliding_window_pattern")?)
                .unwrap_or(6);
            let pattern = match layer_types(path, cfg, n_layers)? {
                Some(kinds) => LayerPattern::Explicit(kinds),
                None => LayerPattern::EveryNthFull(every),
            };
            (Some(window.unwrap_or(4096)), pattern)
        }
    };
    // Gemma 3 embedding models attend both ways: another mask.
    if field(cfg, "use_bidirectional_attention").and_then(Value::as_bool) == Some(true) {
        return Err(CheckpointError::unsupported(
            path,
            "use_bidirectional_attention = true: bidirectional attention is not implemented",
        ));
    }
    if window == Some(0) {
        return Err(CheckpointError::malformed(path, "sliding_window is 0"));
    }
    layout.sliding_window = window;
    // Without a window every layer is full, whatever the pattern says.
    layout.pattern = if window.is_some() {
        pattern
    } else {
        LayerPattern::AllFull
    };
    Ok(())
}

/// Gemma's attention scale and soft caps, with Gemma2Config's and
/// Gemma3TextConfig's defaults (a key set to null turns a cap off).
pub fn parse_gemma(
    path: &Path,
    arch: Architecture,
    cfg: &Value,
    layout: &mut AttentionLayout,
) -> Result<()> {
    if !arch.is_gemma() {
        return Ok(());
    }
    let capped = |key: &str, default: Option<f64>| -> Result<Option<f64>> {
        match cfg.get(key) {
            None => Ok(default),
            Some(v) => number(path, Some(v).filter(|v| !v.is_null()), key),
        }
    };
    layout.query_pre_attn_scalar = Some(
        number(
            path,
            field(cfg, "query_pre_attn_scalar"),
            "query_pre_attn_scalar",
        )?
        .unwrap_or(256.0),
    );
    // Gemma 3's attention never soft-caps, whatever the config says.
    layout.attn_logit_softcapping = match arch {
        Architecture::Gemma2 => capped("attn_logit_softcapping", Some(50.0))?,
        _ => None,
    };
    layout.final_logit_softcapping = match arch {
        Architecture::Gemma2 => capped("final_logit_softcapping", Some(30.0))?,
        _ => capped("final_logit_softcapping", None)?,
    };
    for (key, v) in [
        ("query_pre_attn_scalar", layout.query_pre_attn_scalar),
        ("attn_logit_softcapping", layout.attn_logit_softcapping),
        ("final_logit_softcapping", layout.final_logit_softcapping),
    ] {
        if let Some(x) = v.filter(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(CheckpointError::malformed(
                path,
                format!("{key} {x} must be a positive number"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_each_layers_kind() {
        let mut l = AttentionLayout {
            sliding_window: Some(8),
            pattern: LayerPattern::EveryNthFull(6),
            ..Default::default()
        };
        let kinds: Vec<bool> = (0..12).map(|i| l.window(i).is_some()).collect();
        assert_eq!(
            kinds,
            [true, true, true, true, true, false, true, true, true, true, true, false]
        );
        l.pattern = LayerPattern::SlidingFrom(1);
        assert_eq!((l.window(0), l.window(1)), (None, Some(8)));
        l.pattern = LayerPattern::EvenSliding;
        assert_eq!((l.window(0), l.window(1)), (Some(8), None));
        l.sliding_window = None;
        assert_eq!(l.kind(0), AttentionKind::Full);
    }
}
