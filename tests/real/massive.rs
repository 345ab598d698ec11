//! Massive activations, massive weights and the attacks on the real SmolLM2,
//! against the transformers reference
//! (tests/fixtures/smollm2_transformers_reference.json).

use crate::common;
use mwtop::analysis::massive::{self, MedianScope, Thresholds};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!(
        "../fixtures/smollm2_transformers_reference.json"
    ))
    .unwrap()
}

#[test]
fn smollm2_massive_layer_is_stable_across_prompts_and_matches_the_reference() {
    let crate::Demo { model, tok, .. } = crate::demo();
    let f = fixture();
    let ref_layer = f["attacks"]["layer"].as_u64().unwrap() as usize;
    let ref_dims: Vec<usize> = f["probe"]["mlp_post_bos_top8"][ref_layer.to_string()]["dims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    for prompt in [
        "Summer is warm. Winter is cold.",
        "The quick brown fox jumps over the lazy dog.",
        "In 1905, Albert Einstein published four papers.",
        "def add(a, b):\n    return a + b",
    ] {
        let ids = tok.encode(prompt, false).unwrap().get_ids().to_vec();
        let (probe, pos0) = massive::probe_tokens(model, &ids);
        let r = massive::scan(model, tok, &probe, pos0, 8, Thresholds::default()).unwrap();
        assert_eq!(r.massive_layer, Some(ref_layer), "{prompt:?}");
        let mw = r.massive_weights.unwrap();
        assert_eq!(&mw.dims[..2], &ref_dims[..2], "{prompt:?}");
        // A fixed few hidden dims (507, and 247 on some prompts), the largest at
        // BOS in dim 507 from the massive layer on.
        assert!(
            r.massive_activations
                .iter()
                .all(|a| a.dim == 507 || a.dim == 247),
            "{prompt:?}"
        );
        let top = &r.layers[ref_layer].top[0];
        assert_eq!((top.position, top.dim), (0, 507), "{prompt:?}");
        assert_eq!(
            (r.super_weights[0].row, r.super_weights[0].col),
            (507, ref_dims[0])
        );
    }
    // Per-token medians (the stricter reading): SmolLM2's BOS vector is large
    // everywhere from layer 11 (median ~50), so no ratio reaches 1000 ...
    let ids = tok
        .encode("Summer is warm. Winter is cold.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let (probe, pos0) = massive::probe_tokens(model, &ids);
    let token_scope = Thresholds {
        scope: MedianScope::Token,
        ..Default::default()
    };
    assert_eq!(
        massive::scan(model, tok, &probe, pos0, 8, token_scope)
            .unwrap()
            .massive_layer,
        None
    );
    // ... and with a ratio of 400 it finds the same layer.
    let relaxed = Thresholds {
        min_ratio: 400.0,
        ..token_scope
    };
    assert_eq!(
        massive::scan(model, tok, &probe, pos0, 8, relaxed)
            .unwrap()
            .massive_layer,
        Some(ref_layer)
    );
}

/// The CLI attacks on the real model: zeroing the top-2 massive weights
/// multiplies perplexity, keeping only them stays close, the random controls
/// do neither. Expected values are the transformers reference's.
#[test]
fn smollm2_eval_attacks_match_the_reference() {
    let model = common::demo_model();
    let f = fixture();
    let runs = f["attacks"]["runs"].as_array().unwrap();
    let reference = |mode: &str, k: u64| {
        runs.iter()
            .find(|r| r["mode"] == mode && r["k"] == k)
            .unwrap()["perplexity"]
            .as_f64()
            .unwrap()
    };
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/eval.txt");
    let eval = |mode: &str| -> Value {
        let out = common::mwtop(&[
            "eval",
            common::path_str(&model),
            "--text",
            text,
            "--bos",
            "--mode",
            mode,
            "--k",
            "2",
            "--json",
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let original = eval("original");
    let zero = eval("zero");
    let keep = eval("keep");
    let random_zero = eval("random-zero");
    let random_keep = eval("random-keep");
    let ppl = |v: &Value| v["perplexity"].as_f64().unwrap();
    for (v, mode) in [(&original, "original"), (&zero, "zero"), (&keep, "keep")] {
        let want = reference(mode, if mode == "original" { 0 } else { 2 });
        assert!(
            (ppl(v) / want - 1.0).abs() < 1e-3,
            "{mode}: {} vs {want}",
            ppl(v)
        );
    }
    assert_eq!(zero["mode"], "zero");
    assert_eq!(zero["layer"], 11);
    assert_eq!(zero["dims"], serde_json::json!([1229, 1487]));
    assert!(ppl(&zero) > 2.5 * ppl(&original), "zero top-2 collapses");
    assert!(ppl(&keep) < 1.2 * ppl(&original), "keep top-2 survives");
    assert!(
        (ppl(&random_zero) / ppl(&original) - 1.0).abs() < 0.02,
        "random zero: {}",
        ppl(&random_zero)
    );
    assert!(
        ppl(&random_keep) > 3.0 * ppl(&original),
        "random keep: {}",
        ppl(&random_keep)
    );
    assert_eq!(random_zero["dims"].as_array().unwrap().len(), 2);
    assert!(!random_zero["dims"]
        .as_array()
        .unwrap()
        .contains(&Value::from(1229)));
}

#[test]
fn smollm2_generate_compare_runs_both_models_side_by_side() {
    let model = common::demo_model();
    let f = fixture();
    let g = &f["generations"][0];
    let args = |json: bool| {
        let mut a = vec![
            "generate",
            common::path_str(&model),
            "--prompt",
            g["prompt"].as_str().unwrap(),
            "--chat",
            "--max-tokens",
            "24",
            "--mode",
            "zero",
            "--k",
            "2",
            "--compare",
        ];
        if json {
            a.push("--json");
        }
        common::mwtop(&a)
    };
    let out = args(true);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["original"]["text"], g["text"],
        "the original row is the unattacked model"
    );
    assert_ne!(v["attacked"]["text"], v["original"]["text"]);
    assert_eq!(v["attack"]["mode"], "zero");
    assert_eq!(v["attack"]["dims"], serde_json::json!([1229, 1487]));
    let text = common::stdout(&args(false));
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("original") && header.contains(" | zero k=2 on layer 11"),
        "{text}"
    );
    assert!(text.contains("The capital of France is Paris."), "{text}");
}

#[test]
fn attack_errors_are_one_line() {
    let model = common::demo_model();
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/eval.txt");
    let m = common::path_str(&model);
    for (args, needle) in [
        (
            vec!["eval", m, "--text", text, "--mode", "half"],
            "expected original, zero",
        ),
        (
            vec!["eval", m, "--text", text, "--mode", "zero", "--layer", "30"],
            "layers 0..29",
        ),
        (
            vec![
                "eval", m, "--text", text, "--mode", "zero", "--dims", "1536",
            ],
            "d_ff dims are 0..1535",
        ),
        (
            vec![
                "eval",
                m,
                "--text",
                text,
                "--mode",
                "zero",
                "--min-ratio",
                "1e9",
            ],
            "no massive activation",
        ),
    ] {
        common::assert_one_line_error(&common::mwtop(&args), &[needle]);
    }
}
