//! Massive activations, massive weights and the attacks: exact on a planted
//! synthetic checkpoint, and on the real SmolLM2 against the transformers
//! reference (tests/fixtures/smollm2_transformers_reference.json).

mod common;

use candle_core::{DType, Device};
use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::massive::{self, Thresholds};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::{LogitsMode, Model, RunOptions};
use mwtop::synthetic::Spec;
use serde_json::Value;

fn planted() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = common::tempdir();
    let path = dir.path().join("planted");
    Spec::planted()
        .write_hf_dir(&path, safetensors::Dtype::F32)
        .unwrap();
    (dir, path)
}

#[test]
fn scan_finds_the_planted_massive_weight_exactly() {
    let (_d, path) = planted();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let ids = tok
        .encode("Hello, world", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let (probe, pos0) = massive::probe_tokens(&model, &ids);
    assert_eq!((probe[0], pos0), (256, "bos"));
    let r = massive::scan(&model, &tok, &probe, pos0, 4, Thresholds::default()).unwrap();
    assert_eq!(r.massive_layer, Some(1));
    let mw = r.massive_weights.as_ref().unwrap();
    assert_eq!(mw.layer, 1);
    assert_eq!(&mw.dims[..2], &[300, 17]);
    assert!(
        mw.values[0] > 1000.0 && mw.values[1] > 500.0 && mw.values[2].abs() < 5.0,
        "{:?}",
        mw.values
    );
    // Every massive activation is the planted hidden dim at position 0, from layer 1 on.
    assert!(!r.massive_activations.is_empty());
    for a in &r.massive_activations {
        assert_eq!((a.position, a.dim), (0, 42), "{a:?}");
        assert!(a.layer >= 1 && a.value > 1000.0 && a.ratio >= 1000.0);
    }
    let sw = &r.super_weights[0];
    assert_eq!((sw.layer, sw.row, sw.col, sw.value), (1, 42, 300, 1.5));
    // The value that lands in the residual is the super weight times the d_ff state.
    let at_layer1 = r.massive_activations.iter().find(|a| a.layer == 1).unwrap();
    let residual_before = r.layers[0]
        .top
        .iter()
        .find(|a| a.position == 0 && a.dim == 42)
        .map_or(0.0, |a| a.value);
    assert!(
        (at_layer1.value - (1.5 * mw.values[0] + residual_before)).abs() < 2.0,
        "{} vs {}",
        at_layer1.value,
        1.5 * mw.values[0]
    );
    // Without BOS at position 0 nothing is massive.
    let plain = massive::scan(&model, &tok, &ids, "first-token", 4, Thresholds::default()).unwrap();
    assert_eq!(plain.massive_layer, None);
    assert!(plain.massive_weights.is_none());
}

#[test]
fn attacks_remove_or_keep_the_planted_activation() {
    let (_d, path) = planted();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let tokens = vec![256u32, 72, 105];
    let ranked = massive::rank_ffn_dims(&model, &tokens, 1).unwrap().0;
    assert_eq!(&ranked[..2], &[300, 17]);
    let d_ff = model.config().d_ff;
    let value_at = |attack: &Attack| {
        let opts = RunOptions {
            capture: vec![CaptureRequest::at(
                1,
                HookPoint::ResidPost,
                Reduction::Position(0),
            )],
            interventions: vec![attack.interventions()],
            logits: LogitsMode::None,
            ..Default::default()
        };
        model
            .forward(std::slice::from_ref(&tokens), None, &opts)
            .unwrap()
            .captures[0]
            .values[42]
    };
    let original = value_at(&Attack::new(AttackMode::Original, 1, &ranked, 0, d_ff, 0));
    let zero1 = value_at(&Attack::new(AttackMode::Zero, 1, &ranked, 1, d_ff, 0));
    let keep1 = value_at(&Attack::new(AttackMode::Keep, 1, &ranked, 1, d_ff, 0));
    let keep0 = value_at(&Attack::new(AttackMode::Keep, 1, &ranked, 0, d_ff, 0));
    let random_zero = value_at(&Attack::new(AttackMode::RandomZero, 1, &ranked, 1, d_ff, 3));
    assert!(original > 1000.0);
    assert!(zero1.abs() < 5.0, "zeroing the top row removes it: {zero1}");
    assert!(
        (keep1 - original).abs() < 1.0,
        "keeping only the top row keeps it: {keep1} vs {original}"
    );
    assert!(keep0.abs() < 5.0);
    assert!(
        (random_zero - original).abs() < 1.0,
        "a random row changes nothing: {random_zero}"
    );
}

#[test]
fn scan_json_has_the_documented_keys() {
    let (_d, path) = planted();
    let out = common::mwtop(&[
        "scan",
        common::path_str(&path),
        "--prompt",
        "Hi",
        "--k",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["massive_layer"], 1);
    assert_eq!(v["massive_weights"]["layer"], 1);
    assert_eq!(v["massive_weights"]["dims"].as_array().unwrap().len(), 3);
    assert_eq!(v["massive_weights"]["dims"][0], 300);
    let a = &v["massive_activations"][0];
    for key in ["layer", "position", "dim", "value", "ratio"] {
        assert!(!a[key].is_null(), "{key}");
    }
    assert_eq!(
        v["super_weights"][0],
        serde_json::json!({"layer": 1, "row": 42, "col": 300, "value": 1.5})
    );
    // Human form names the layer and the weights.
    let text = common::stdout(&common::mwtop(&[
        "scan",
        common::path_str(&path),
        "--prompt",
        "Hi",
    ]));
    assert!(text.contains("massive layer: 1"), "{text}");
    assert!(
        text.contains("super weight: model.layers.1.mlp.down_proj.weight[42, 300] = 1.5000"),
        "{text}"
    );
}

/// `--mode super` zeroes the one down_proj scalar the scan names (the
/// planted super weight, layer 1 [42, 300]), exactly what `--edit
/// 1:42,300=0` does; a bad `--edit` is refused in one line.
#[test]
fn the_super_weight_attack_is_the_edit_that_zeroes_it() {
    let (_dir, path) = planted();
    let m = path.to_str().unwrap();
    let text = _dir.path().join("text.txt");
    std::fs::write(
        &text,
        "Hi there, the planted model reads this text twice. Hi there.",
    )
    .unwrap();
    let t = text.to_str().unwrap();
    let ppl = |extra: &[&str]| -> f64 {
        let mut args = vec!["eval", m, "--text", t, "--bos", "--json"];
        args.extend_from_slice(extra);
        let out = common::mwtop(&args);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let original = ppl(&[]);
    let sup = ppl(&["--mode", "super"]);
    let edit = ppl(&["--edit", "1:42,300=0"]);
    assert_eq!(sup, edit, "the same single weight");
    assert!((sup / original - 1.0).abs() > 1e-3, "{sup} vs {original}");
    // Setting it to what it is changes nothing.
    assert!((ppl(&["--edit", "1:42,300=1.5"]) - original).abs() < 1e-9 * original);
    let gen = common::mwtop(&[
        "generate",
        m,
        "--prompt",
        "Hi",
        "--max-tokens",
        "4",
        "--mode",
        "super",
        "--json",
    ]);
    assert!(gen.status.success(), "{}", common::stderr(&gen));
    for (bad, needle) in [
        ("1:42=0", "expected L:row,col=value"),
        ("7:1,2=0", "layers 0.."),
    ] {
        common::assert_one_line_error(
            &common::mwtop(&["eval", m, "--text", t, "--edit", bad]),
            &[needle],
        );
    }
}

/// `generate` with `states`: the token chosen after BOS alone sees the
/// planted activation (hidden dim 42 from layer 1 on, made by d_ff dims 300
/// and 17); the attacked row of the same batch does not; and every later
/// token's states, read from the cached decode step, are those a full
/// forward over the sequence so far has at its last position.
#[test]
fn generated_tokens_carry_their_states() {
    use mwtop::analysis::generate::{generate, GenerateParams, STATE_TOP};
    use mwtop::model::intervention::Interventions;
    use std::ops::ControlFlow;
    let (_d, path) = planted();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let d_ff = model.config().d_ff;
    let zero = Attack::new(AttackMode::Zero, 1, &[300, 17], 2, d_ff, 0);
    let params = GenerateParams {
        max_tokens: 5,
        stop_at_eos: false,
        states: true,
        ..Default::default()
    };
    let rows = [Interventions::none(), zero.interventions()];
    let out = generate(&model, &tok, &[256], &rows, &params, |_, _, _| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let layers = model.config().n_layers;
    for g in &out {
        assert_eq!(g.states.len(), g.tokens.len());
        for s in &g.states {
            for per_layer in [&s.resid_mid, &s.mlp_post, &s.resid_post] {
                assert_eq!(per_layer.len(), layers);
                for top in per_layer.iter() {
                    assert_eq!(top.len(), STATE_TOP);
                    assert!(top.windows(2).all(|w| w[0].1.abs() >= w[1].1.abs()));
                }
            }
        }
    }
    let first = &out[0].states[0];
    for l in 1..layers {
        let (dim, value) = first.resid_post[l][0];
        assert_eq!(dim, 42, "layer {l}");
        assert!(value.abs() > 1000.0, "layer {l}: {value}");
    }
    let mut top_ffn: Vec<u32> = first.mlp_post[1][..2].iter().map(|e| e.0).collect();
    top_ffn.sort();
    assert_eq!(top_ffn, vec![17, 300]);
    let attacked = &out[1].states[0];
    assert!(
        attacked.resid_post[1][0].1.abs() < 5.0,
        "{:?}",
        attacked.resid_post[1]
    );
    // Later tokens: the decode step's states against full forwards.
    let points = [
        HookPoint::ResidMid,
        HookPoint::MlpPost,
        HookPoint::ResidPost,
    ];
    let g = &out[0];
    for step in 1..g.tokens.len() {
        let seq: Vec<u32> = std::iter::once(256)
            .chain(g.tokens[..step].iter().copied())
            .collect();
        let opts = RunOptions {
            capture: points
                .iter()
                .map(|&p| CaptureRequest::every_layer(p, Reduction::Position(usize::MAX)))
                .collect(),
            logits: LogitsMode::None,
            ..Default::default()
        };
        let caps = model.forward(&[seq], None, &opts).unwrap().captures;
        for (point, got) in points.iter().zip([
            &g.states[step].resid_mid,
            &g.states[step].mlp_post,
            &g.states[step].resid_post,
        ]) {
            for (l, top) in got.iter().enumerate() {
                let full = caps
                    .iter()
                    .find(|c| c.hook.layer == l && c.hook.point == *point)
                    .unwrap();
                for &(dim, value) in top {
                    let want = full.values[dim as usize];
                    assert!(
                        (value - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "step {step} layer {l} {point:?} dim {dim}: {value} vs {want}"
                    );
                }
                let largest = full.values.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!((top[0].1.abs() - largest).abs() <= 1e-4 * largest.max(1.0));
            }
        }
    }
}
