//! Gemma 3 270M (Q4_K_M GGUF, the second demo model) against code nobody
//! here wrote: its tokenizer against llama.cpp's (llama-cpp-python,
//! vocabulary only; tests/fixtures/gemma3_llamacpp_tokenizer.json) and its
//! forward against transformers 5.17 reading the same GGUF in fp32 on an
//! H200 (tests/fixtures/gemma3_transformers_reference.json). transformers'
//! own GGUF tokenizer for Gemma 3 splits words into fragments, so the model
//! is compared on transformers' ids; the tokenizer on llama.cpp's.

use mwtop::analysis::massive::{self, Thresholds};
use mwtop::analysis::perplexity::{perplexity, Window};
use mwtop::model::intervention::{Interventions, MaskMode};
use mwtop::model::{Model, RunOptions};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gemma3_tokenizer_ids_equal_llama_cpp() {
    let tok = &crate::gemma3().tok;
    for case in fixture("gemma3_llamacpp_tokenizer.json")["cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, u32s(&case["ids"]), "{text:?}");
    }
}

#[test]
fn gemma3_forward_matches_transformers() {
    let crate::Demo { model, tok, .. } = crate::gemma3();
    let f = fixture("gemma3_transformers_reference.json");
    let ids = u32s(&f["eval_ids"]);
    let out = model
        .forward(std::slice::from_ref(&ids), None, &RunOptions::default())
        .unwrap();
    let lp = Model::next_token_logprobs(&out.logits.unwrap().get(0).unwrap(), &ids).unwrap();
    let want: Vec<f64> = f["eval"]["next_logprob"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    // The residual stream reaches 1e5 here: f32 sums in another order
    // (CPU against GPU) move log-probs by a few 1e-4.
    let worst = lp
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-3, "log-probs differ by {worst:.2e}");
    let ppl = (-lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64).exp();
    let want_ppl = f["eval"]["perplexity"].as_f64().unwrap();
    assert!((ppl / want_ppl - 1.0).abs() < 1e-4, "{ppl} vs {want_ppl}");

    // Massive activations of the probe, layer by layer.
    let probe = u32s(&f["probe"]["ids"]);
    let scan = massive::scan(model, tok, &probe, "bos", 8, Thresholds::default()).unwrap();
    assert_eq!(
        scan.massive_layer,
        f["probe"]["massive_layer"].as_u64().map(|l| l as usize)
    );
    for st in f["probe"]["resid_post"].as_array().unwrap() {
        let layer = st["layer"].as_u64().unwrap() as usize;
        let top = &scan.layers[layer].top[0];
        assert_eq!(top.dim as u64, st["dim"].as_u64().unwrap(), "layer {layer}");
        let want = st["value"].as_f64().unwrap();
        assert!(
            (top.value as f64 / want - 1.0).abs() < 1e-4,
            "layer {layer}: {} vs {want}",
            top.value
        );
    }
    // Gemma carries the massive magnitude in its post-MLP norm: at hidden
    // dim 163 the largest scale of every layer from 3 to 16.
    let n = scan.post_mlp_norm.iter().find(|n| n.dim == 163).unwrap();
    for l in &n.layers[3..17] {
        assert_eq!(l.rank, 1, "layer {}: scale {}", l.layer, l.scale);
        assert!(l.scale > 400.0, "layer {}: scale {}", l.layer, l.scale);
    }
    let layer = f["attacks"]["layer"].as_u64().unwrap() as usize;
    let want_dims = u32s(&f["probe"]["mlp_post_bos_top8"][layer.to_string()]["dims"]);
    let (ranked, _) = massive::rank_ffn_dims(model, &probe, layer).unwrap();
    let got: Vec<u32> = ranked.iter().take(8).map(|&d| d as u32).collect();
    assert_eq!(got, want_dims);

    // The attacks, against transformers with the rows physically zeroed.
    let mut bos_ids = vec![model.config().bos_token_id.unwrap()];
    bos_ids.extend(&ids);
    let runs = f["attacks"]["runs"].as_array().unwrap();
    let rows: Vec<Interventions> = runs
        .iter()
        .map(|r| {
            let dims: Vec<usize> = u32s(&r["dims"]).into_iter().map(|d| d as usize).collect();
            match r["mode"].as_str().unwrap() {
                "original" => Interventions::none(),
                "zero" => Interventions::ffn_mask(layer, MaskMode::Zero, dims),
                _ => Interventions::ffn_mask(layer, MaskMode::Keep, dims),
            }
        })
        .collect();
    for (chunk, want) in rows.chunks(4).zip(runs.chunks(4)) {
        let got = perplexity(model, &bos_ids, chunk, Window::default_for(model)).unwrap();
        for (g, r) in got.iter().zip(want) {
            let w = r["perplexity"].as_f64().unwrap();
            assert!(
                (g.perplexity / w - 1.0).abs() < 1e-3,
                "{} k={}: {} vs {w}",
                r["mode"],
                r["k"],
                g.perplexity
            );
        }
    }
}
