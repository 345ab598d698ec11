//! mwtop against Hugging Face transformers (fp32, on an H200, reading the same
//! GGUF with its own dequantization and tokenizer conversion). The reference
//! outputs were produced by scripts/reference_transformers.py and are kept in
//! tests/fixtures/smollm2_transformers_reference.json.

use crate::common;

use std::sync::OnceLock;

use candle_core::IndexOp;
use mwtop::analysis::generate::{generate, GenerateParams};
use mwtop::analysis::perplexity::{perplexity, Window};
use mwtop::checkpoint::chat::{self, Message};
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::intervention::{Interventions, MaskMode};
use mwtop::model::{LogitsMode, Model, RunOptions};
use serde_json::Value;

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        serde_json::from_str(include_str!(
            "../fixtures/smollm2_transformers_reference.json"
        ))
        .unwrap()
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn tokenizer_ids_equal_the_reference() {
    let ckpt = &crate::demo().ckpt;
    let tok = ckpt.tokenizer().unwrap();
    let f = fixture();
    for case in f["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
    }
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/eval.txt")).unwrap();
    assert_eq!(
        tok.encode(text.as_str(), false).unwrap().get_ids(),
        ids(&f["eval_ids"]).as_slice()
    );
}

#[test]
fn chat_template_renders_like_transformers() {
    let ckpt = &crate::demo().ckpt;
    for g in fixture()["generations"].as_array().unwrap() {
        if !g["chat"].as_bool().unwrap() {
            continue;
        }
        let got = chat::render(
            ckpt.chat_template().as_deref(),
            &[Message::user(g["prompt"].as_str().unwrap())],
            "<|im_start|>",
            "<|im_end|>",
        )
        .unwrap();
        assert_eq!(got, g["rendered"].as_str().unwrap());
    }
}

#[test]
fn logits_and_perplexity_match_transformers() {
    let model = &crate::demo().model;
    let f = fixture();
    let tokens = ids(&f["eval_ids"]);
    let n = tokens.len();
    let out = model
        .forward(std::slice::from_ref(&tokens), None, &RunOptions::default())
        .unwrap();
    let logits = out.logits.unwrap().i(0).unwrap(); // (n, vocab)
    let lse = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    let max: Vec<f32> = logits.max(1).unwrap().to_vec1().unwrap();
    let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    let e = &f["eval"];
    let (ref_max, ref_arg, ref_lse) = (
        floats(&e["max_logit"]),
        ids(&e["argmax"]),
        floats(&e["logsumexp"]),
    );
    let mut worst = 0f64;
    let mut argmax_differs = 0;
    for p in 0..n {
        worst = worst.max((max[p] as f64 - ref_max[p]).abs());
        // log-sum-exp = max - log_softmax(max)
        let our_lse = max[p] as f64
            - lse
                .i((p, argmax[p] as usize))
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
        worst = worst.max((our_lse - ref_lse[p]).abs());
        argmax_differs += usize::from(argmax[p] != ref_arg[p]);
    }
    let probe_ids = ids(&e["probe_ids"]);
    for (pos, want) in e["probes"].as_object().unwrap() {
        let row: Vec<f32> = logits
            .i(pos.parse::<usize>().unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        for (id, w) in probe_ids.iter().zip(floats(want)) {
            worst = worst.max((row[*id as usize] as f64 - w).abs());
        }
    }
    eprintln!("largest |logit difference| against transformers: {worst:.2e}; argmax differs at {argmax_differs} of {n}");
    assert!(worst < 2e-3, "logits differ by {worst}");
    assert_eq!(argmax_differs, 0);
    // Next-token log-probs and the perplexity.
    let lp = Model::next_token_logprobs(&logits, &tokens).unwrap();
    let ref_lp = floats(&e["next_logprob"]);
    let worst_lp = lp
        .iter()
        .zip(&ref_lp)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst_lp < 2e-3, "log-probs differ by {worst_lp}");
    let ppl = perplexity(model, &tokens, &[], Window::default_for(model)).unwrap()[0].perplexity;
    let ref_ppl = e["perplexity"].as_f64().unwrap();
    assert!(
        (ppl / ref_ppl - 1.0).abs() < 1e-3,
        "perplexity {ppl} vs {ref_ppl}"
    );
}

#[test]
fn greedy_generations_are_identical() {
    let crate::Demo { model, tok, .. } = crate::demo();
    let params = GenerateParams {
        max_tokens: 48,
        ..Default::default()
    };
    for g in fixture()["generations"].as_array().unwrap() {
        let prompt = ids(&g["prompt_ids"]);
        let rendered = g["rendered"].as_str().unwrap();
        assert_eq!(
            tok.encode(rendered, false).unwrap().get_ids(),
            prompt.as_slice()
        );
        let out = generate(
            model,
            tok,
            &prompt,
            &[Interventions::none()],
            &params,
            |_, _, _| std::ops::ControlFlow::Continue(()),
        )
        .unwrap()
        .remove(0);
        let mut got = out.tokens.clone();
        if out.stop == mwtop::analysis::generate::StopReason::Eos {
            got.push(2);
        }
        assert_eq!(got, ids(&g["ids"]), "{rendered:?}");
        assert_eq!(out.text, g["text"].as_str().unwrap());
    }
}

#[test]
fn hook_captures_match_transformers_hidden_states() {
    let model = &crate::demo().model;
    let probe = &fixture()["probe"];
    let tokens = ids(&probe["ids"]);
    let opts = RunOptions {
        capture: vec![
            CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::TopK(1)),
            CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
        ],
        logits: LogitsMode::None,
        ..Default::default()
    };
    let out = model.forward(&[tokens], None, &opts).unwrap();
    let d = model.config().d_model;
    for want in probe["resid_post"].as_array().unwrap() {
        let layer = want["layer"].as_u64().unwrap() as usize;
        let c = out
            .captures
            .iter()
            .find(|c| c.hook.layer == layer && c.hook.point == HookPoint::ResidPost)
            .unwrap();
        let (pos, dim) = (c.indices[0] as usize / d, c.indices[0] as usize % d);
        assert_eq!(
            (pos as u64, dim as u64),
            (
                want["position"].as_u64().unwrap(),
                want["dim"].as_u64().unwrap()
            ),
            "layer {layer}"
        );
        let v = want["value"].as_f64().unwrap();
        assert!(
            (c.values[0] as f64 - v).abs() <= 1e-4 * v.abs().max(1.0),
            "layer {layer}: {} vs {v}",
            c.values[0]
        );
    }
    for (layer, want) in probe["mlp_post_bos_top8"].as_object().unwrap() {
        let layer: usize = layer.parse().unwrap();
        let c = out
            .captures
            .iter()
            .find(|c| c.hook.layer == layer && c.hook.point == HookPoint::MlpPost)
            .unwrap();
        for (dim, v) in ids(&want["dims"]).into_iter().zip(floats(&want["values"])) {
            let got = c.values[dim as usize] as f64;
            assert!(
                (got - v).abs() <= 1e-4 * v.abs().max(10.0),
                "layer {layer} dim {dim}: {got} vs {v}"
            );
        }
    }
}

/// The d_ff mask equals physically zeroing rows of W_up and W_gate (the
/// paper's definition), and the attacked perplexities equal transformers'
/// with physically zeroed weights. All attacks run as one batch.
#[test]
fn ffn_masks_equal_zeroed_weights_and_match_the_reference_attacks() {
    let mut model = crate::fresh_model(&crate::demo().ckpt);
    let f = fixture();
    let attacks = &f["attacks"];
    let layer = attacks["layer"].as_u64().unwrap() as usize;
    let bos = model.config().bos_token_id.unwrap();
    let mut tokens = vec![bos];
    tokens.extend(ids(&f["eval_ids"]));
    let runs = attacks["runs"].as_array().unwrap();
    let rows: Vec<Interventions> = runs
        .iter()
        .map(|r| {
            let dims: Vec<usize> = ids(&r["dims"]).into_iter().map(|d| d as usize).collect();
            match r["mode"].as_str().unwrap() {
                "original" => Interventions::none(),
                "zero" => Interventions::ffn_mask(layer, MaskMode::Zero, dims),
                _ => Interventions::ffn_mask(layer, MaskMode::Keep, dims),
            }
        })
        .collect();
    let got = perplexity(&model, &tokens, &rows, Window::default_for(&model)).unwrap();
    for (r, g) in runs.iter().zip(&got) {
        let want = r["perplexity"].as_f64().unwrap();
        assert!(
            (g.perplexity / want - 1.0).abs() < 1e-3,
            "{} k={}: {} vs {want}",
            r["mode"],
            r["k"],
            g.perplexity
        );
    }
    // Mask vs physically zeroed rows, on the zero-top-2 attack.
    let dims: Vec<usize> = ids(&runs[2]["dims"])
        .into_iter()
        .map(|d| d as usize)
        .collect();
    let masked = model
        .forward(
            &[tokens.clone()],
            None,
            &RunOptions {
                interventions: vec![Interventions::ffn_mask(layer, MaskMode::Zero, dims.clone())],
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    model.physically_zero_ffn_rows(layer, &dims).unwrap();
    let zeroed = model
        .forward(&[tokens], None, &RunOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let diff = common::max_diff(&masked, &zeroed);
    assert!(diff < 1e-4, "mask and zeroed weights differ by {diff}");
}
