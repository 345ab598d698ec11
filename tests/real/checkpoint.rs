//! The real demo model (SmolLM2-135M-Instruct, Q4_1 GGUF), fetched through the
//! same code `mwtop` uses. These tests fail, never skip, without it.

use crate::common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use mwtop::checkpoint::{Architecture, Checkpoint, Format, StoredDType};

#[test]
fn smollm2_hyper_parameters_and_tensor_table() {
    let path = common::demo_model();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    assert_eq!(ckpt.format(), Format::Gguf);
    let c = ckpt.config();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(c.n_layers, 30);
    assert_eq!(c.d_model, 576);
    assert_eq!(c.d_ff, 1536);
    assert_eq!(c.n_heads, 9);
    assert_eq!(c.n_kv_heads, 3);
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tied_embeddings);
    assert_eq!(c.rope_theta, 100_000.0);
    assert_eq!(c.norm_eps, 1e-5);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(c.max_position_embeddings, 8192);
    // token_embd + output_norm + 9 per layer; no output.weight (tied).
    assert_eq!(ckpt.tensors().len(), 272);
    assert!(ckpt.info("lm_head.weight").is_none());
    let count = |d: GgmlDType| {
        ckpt.tensors()
            .iter()
            .filter(|t| t.dtype == StoredDType::Ggml(d))
            .count()
    };
    assert_eq!(
        (
            count(GgmlDType::Q4_1),
            count(GgmlDType::F32),
            count(GgmlDType::Q8_0)
        ),
        (210, 61, 1)
    );
    let up = ckpt.info("model.layers.3.mlp.up_proj.weight").unwrap();
    assert_eq!(up.shape, vec![1536, 576]);
    assert_eq!(up.stored_name, "blk.3.ffn_up.weight");
    assert_eq!(up.bytes, 1536 * 576 / 32 * 20);
    let first = ckpt.info("model.embed_tokens.weight").unwrap();
    assert_eq!(
        (first.offset, first.bytes),
        (1_785_664, 49152 * 576 / 32 * 34)
    );
    assert_eq!(
        ckpt.info("model.layers.0.mlp.down_proj.weight")
            .unwrap()
            .shape,
        vec![576, 1536]
    );
    assert_eq!(
        ckpt.info("model.layers.29.self_attn.k_proj.weight")
            .unwrap()
            .shape,
        vec![192, 576]
    );
    assert_eq!(ckpt.parameter_count(), 134_515_008);
}

/// Our dequantization equals gguf-py's (llama.cpp's Python package) to f32
/// precision: sums, maxima and probes from tests/fixtures, made by
/// scripts/gguf_reference.py. q/k come out in Hugging Face layout.
#[test]
fn smollm2_tensors_match_gguf_py() {
    let ckpt = &crate::demo().ckpt;
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/smollm2_gguf_reference.json")).unwrap();
    let tensors = fixture["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), 9);
    for (name, want) in tensors {
        let t = ckpt.tensor(name, DType::F32, &Device::Cpu).unwrap();
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (idx, expected) in want["probes"].as_object().unwrap() {
            let i: usize = idx.parse().unwrap();
            assert_eq!(v[i] as f64, expected.as_f64().unwrap(), "{name}[{i}]");
        }
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        let abs_sum: f64 = v.iter().map(|&x| (x as f64).abs()).sum();
        let max_abs = v.iter().fold(0f32, |m, &x| m.max(x.abs())) as f64;
        let ref_abs = want["abs_sum"].as_f64().unwrap();
        assert!(
            (sum - want["sum"].as_f64().unwrap()).abs() <= 1e-9 * ref_abs.max(1.0),
            "{name} sum"
        );
        assert!(
            (abs_sum - ref_abs).abs() <= 1e-9 * ref_abs,
            "{name} abs_sum"
        );
        assert_eq!(max_abs, want["max_abs"].as_f64().unwrap(), "{name} max_abs");
    }
}

#[test]
fn smollm2_vocabulary_tokenizes_and_round_trips() {
    let ckpt = &crate::demo().ckpt;
    let tok = ckpt.tokenizer().unwrap();
    assert_eq!(tok.get_vocab_size(true), 49152);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    let text = "<|im_start|>user\nIn 2024, 1234 cafés   opened—東京!<|im_end|>";
    let enc = tok.encode(text, false).unwrap();
    let ids = enc.get_ids();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    // SmolLM2's pre-tokenizer splits digits one by one: each digit is its own token.
    let digits: Vec<u32> = "1234"
        .chars()
        .map(|c| tok.token_to_id(&c.to_string()).unwrap())
        .collect();
    assert!(ids.windows(4).any(|w| w == digits.as_slice()), "{ids:?}");
    assert_eq!(tok.decode(ids, false).unwrap(), text);
}

#[test]
fn inspect_json_on_the_demo_model() {
    let path = common::demo_model();
    let out = common::mwtop(&["inspect", common::path_str(&path), "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["config"]["n_layers"], 30);
    assert_eq!(v["parameters"], 134_515_008u64);
    let t = &v["tensors"][1];
    assert_eq!(t["name"], "model.layers.0.input_layernorm.weight");
    assert_eq!(t["stored_name"], "blk.0.attn_norm.weight");
    assert_eq!(t["dtype"], "F32");
    assert_eq!(t["shape"], serde_json::json!([576]));
    assert_eq!(t["bytes"], 2304);
    assert_eq!(t["offset"], 31_866_688u64);
    // The human table names every tensor too.
    let text = common::stdout(&common::mwtop(&["inspect", common::path_str(&path)]));
    assert!(
        text.contains("layers 30  d_model 576  d_ff 1536  heads 9  kv heads 3  head dim 64"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("model.")).count(),
        272
    );
}
