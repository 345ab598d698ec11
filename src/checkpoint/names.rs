//! GGUF tensor names -> canonical Hugging Face names, and the value
//! transforms llama.cpp's converter applied that must be undone.

use super::config::Architecture;

/// What must be done to stored GGUF values to get the Hugging Face tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// llama.cpp permutes the rows of q/k projections (per head, the two
    /// rotary halves are interleaved) so that its RoPE can rotate adjacent
    /// pairs. Undone here so that canonical tensors are exactly Hugging Face's.
    UnpermuteRope {
        heads: usize,
    },
    /// llama.cpp stores Gemma RMSNorm weights as `1 + w`.
    SubtractOne,
}

/// The canonical name for a GGUF tensor name; unknown names are kept as they are.
pub fn canonical_name(arch: Architecture, gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return gguf.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return gguf.to_string();
    };
    let Some((part, suffix)) = rest.rsplit_once('.') else {
        return gguf.to_string();
    };
    let gemma = arch.is_gemma();
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        // Phi-3 keeps its fused tensors: q, k, v in one; gate then up in ffn_up.
        "attn_qkv" => "self_attn.qkv_proj",
        "ffn_up" if arch == Architecture::Phi3 => "mlp.gate_up_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_post_norm" | "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_post_norm" | "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return gguf.to_string(),
    };
    format!("model.layers.{layer}.{hf}.{suffix}")
}

/// The transform for a canonical tensor of a GGUF checkpoint.
pub fn transform_for(
    arch: Architecture,
    canonical: &str,
    n_heads: usize,
    n_kv_heads: usize,
) -> Transform {
    let rope_permuted = matches!(arch, Architecture::Llama | Architecture::Mistral);
    if rope_permuted && canonical.ends_with("self_attn.q_proj.weight") {
        Transform::UnpermuteRope { heads: n_heads }
    } else if rope_permuted && canonical.ends_with("self_attn.k_proj.weight") {
        Transform::UnpermuteRope { heads: n_kv_heads }
    } else if arch.is_gemma() && canonical.ends_with("norm.weight") {
        Transform::SubtractOne
    } else {
        Transform::None
    }
}

/// The GGUF name of a canonical tensor (inverse of [`canonical_name`]), for writers.
pub fn gguf_name(arch: Architecture, canonical: &str) -> String {
    match canonical {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let Some(rest) = canonical.strip_prefix("model.layers.") else {
        return canonical.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return canonical.to_string();
    };
    let Some((part, suffix)) = rest.rsplit_once('.') else {
        return canonical.to_string();
    };
    let gemma = arch.is_gemma();
    let g = match part {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" => "ffn_up",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return canonical.to_string(),
    };
    format!("blk.{layer}.{g}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_llama_tensor() {
        for gguf in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.7.attn_norm.weight",
            "blk.7.attn_q.weight",
            "blk.7.attn_k.weight",
            "blk.7.attn_v.weight",
            "blk.7.attn_output.weight",
            "blk.7.ffn_norm.weight",
            "blk.7.ffn_gate.weight",
            "blk.7.ffn_up.weight",
            "blk.7.ffn_down.weight",
        ] {
            let hf = canonical_name(Architecture::Llama, gguf);
            assert_ne!(hf, gguf);
            assert_eq!(gguf_name(Architecture::Llama, &hf), gguf);
        }
        assert_eq!(
            canonical_name(Architecture::Llama, "blk.12.ffn_up.weight"),
            "model.layers.12.mlp.up_proj.weight"
        );
        assert_eq!(
            canonical_name(Architecture::Gemma3, "blk.0.ffn_norm.weight"),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
    }
}
