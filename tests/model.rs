//! The forward pass on the synthetic checkpoint: KV cache, batching,
//! interventions and sampling behave as their definitions say.

mod common;

use std::ops::ControlFlow;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, IndexOp};
use mwtop::analysis::generate::{generate, GenerateParams};
use mwtop::analysis::massive::{self, Thresholds};
use mwtop::analysis::perplexity::{perplexity, Window};
use mwtop::analysis::target;
use mwtop::checkpoint::Checkpoint;
use mwtop::checkpoint::{Proj, WeightId};
use mwtop::model::hooks::{self, CaptureRequest, HookPoint, Reduction};
use mwtop::model::intervention::{Interventions, MaskMode, WeightEdit};
use mwtop::model::{Model, RunOptions};
use mwtop::synthetic::Spec;

fn tiny() -> (tempfile::TempDir, Checkpoint) {
    let dir = common::tempdir();
    let path = dir.path().join("tiny.gguf");
    Spec::default().write_gguf(&path, GgmlDType::F32).unwrap();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    (dir, ckpt)
}

fn load(ckpt: &Checkpoint) -> Model {
    Model::load(ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap()
}

use common::max_diff;

const TOKENS: [u32; 12] = [256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100];

#[test]
fn incremental_decoding_with_the_cache_equals_a_full_forward() {
    let (_d, ckpt) = tiny();
    let model = load(&ckpt);
    let full = model
        .forward(&[TOKENS.to_vec()], None, &RunOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let mut cache = model.new_cache();
    let first = model
        .forward(
            &[TOKENS[..5].to_vec()],
            Some(&mut cache),
            &RunOptions::default(),
        )
        .unwrap()
        .logits
        .unwrap();
    assert!(max_diff(&first, &full.narrow(1, 0, 5).unwrap()) < 1e-5);
    for (p, &t) in TOKENS.iter().enumerate().skip(5) {
        let step = model
            .forward(&[vec![t]], Some(&mut cache), &RunOptions::default())
            .unwrap()
            .logits
            .unwrap();
        assert!(
            max_diff(&step, &full.narrow(1, p, 1).unwrap()) < 1e-5,
            "position {p}"
        );
    }
    assert_eq!(cache.len(), TOKENS.len());
}

#[test]
fn a_batch_equals_its_rows_run_alone_with_per_row_interventions() {
    let (_d, ckpt) = tiny();
    let model = load(&ckpt);
    let other: Vec<u32> = TOKENS.iter().rev().copied().collect();
    let masked = Interventions::ffn_mask(1, MaskMode::Keep, vec![3, 100, 511]);
    let batch = model
        .forward(
            &[TOKENS.to_vec(), other.clone()],
            None,
            &RunOptions {
                interventions: vec![Interventions::none(), masked.clone()],
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    let a = model
        .forward(&[TOKENS.to_vec()], None, &RunOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let b = model
        .forward(
            &[other],
            None,
            &RunOptions {
                interventions: vec![masked],
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    assert!(max_diff(&batch.i(0..1).unwrap(), &a) < 1e-5);
    assert!(max_diff(&batch.i(1..2).unwrap(), &b) < 1e-5);
    // And the mask did something.
    assert!(max_diff(&a, &b) > 1e-3);
}

/// Rows of one text whose interventions start at a later layer share the
/// layers before it (run once, for one row): each row still equals its run
/// alone, captures above the shared layers keep every row, and rows with
/// nothing done to them agree to the bit.
#[test]
fn rows_of_one_text_share_the_layers_before_their_interventions() {
    let dir = common::tempdir();
    let path = dir.path().join("deep.gguf");
    let spec = Spec {
        n_layers: 4,
        ..Default::default()
    };
    spec.write_gguf(&path, GgmlDType::F32).unwrap();
    let model = load(&Checkpoint::open_path(&path).unwrap());
    let edit = Interventions {
        weight_edits: vec![WeightEdit {
            tensor: WeightId::layer(3, Proj::Down),
            row: 5,
            col: 7,
            value: 40.0,
        }],
        ..Default::default()
    };
    let rows = vec![
        Interventions::none(),
        Interventions::ffn_mask(2, MaskMode::Keep, vec![3, 100, 511]),
        edit,
        Interventions::ffn_mask(2, MaskMode::Zero, vec![3, 100, 511]),
    ];
    let capture = vec![CaptureRequest {
        layers: Some(vec![2, 3]),
        point: HookPoint::ResidPost,
        reduction: Reduction::MaxAbsPerDim,
    }];
    let run = |tokens: Vec<Vec<u32>>, interventions: Vec<Interventions>| {
        model
            .forward(
                &tokens,
                None,
                &RunOptions {
                    interventions,
                    capture: capture.clone(),
                    ..Default::default()
                },
            )
            .unwrap()
    };
    let batch = run(vec![TOKENS.to_vec(); rows.len()], rows.clone());
    let logits = batch.logits.unwrap();
    let mut alone_logits = Vec::new();
    for (r, iv) in rows.iter().enumerate() {
        let alone = run(vec![TOKENS.to_vec()], vec![iv.clone()]);
        let one = alone.logits.unwrap();
        assert!(
            max_diff(&logits.i(r..r + 1).unwrap(), &one) < 1e-5,
            "row {r}"
        );
        for (got, want) in batch.captures.iter().zip(&alone.captures) {
            assert_eq!(got.shape, vec![rows.len(), 256]);
            let d = want.values.len();
            let row = &got.values[r * d..(r + 1) * d];
            let worst = row
                .iter()
                .zip(&want.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "row {r}, {}: {worst}", got.hook);
        }
        alone_logits.push(one);
    }
    // Every intervention changed its row.
    for (r, one) in alone_logits.iter().enumerate().skip(1) {
        assert!(
            max_diff(one, &alone_logits[0]) > 1e-3,
            "row {r} changed nothing"
        );
    }
    // Two untouched rows and no captures: the whole stack runs once and
    // both rows are that run.
    let twins = model
        .forward(
            &[TOKENS.to_vec(), TOKENS.to_vec()],
            None,
            &RunOptions::default(),
        )
        .unwrap()
        .logits
        .unwrap();
    let (a, b) = (twins.i(0).unwrap(), twins.i(1).unwrap());
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
}

#[test]
fn ffn_mask_equals_zeroed_rows_of_up_and_gate() {
    let (_d, ckpt) = tiny();
    let mut model = load(&ckpt);
    let dims = vec![0, 17, 300];
    let masked = model
        .forward(
            &[TOKENS.to_vec()],
            None,
            &RunOptions {
                interventions: vec![Interventions::ffn_mask(0, MaskMode::Zero, dims.clone())],
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    model.physically_zero_ffn_rows(0, &dims).unwrap();
    let zeroed = model
        .forward(&[TOKENS.to_vec()], None, &RunOptions::default())
        .unwrap()
        .logits
        .unwrap();
    assert!(max_diff(&masked, &zeroed) < 1e-6);
}

#[test]
fn weight_edits_equal_physically_edited_weights() {
    let (_d, ckpt) = tiny();
    for (tensor, row, col, value) in [
        ("model.layers.1.mlp.down_proj.weight", 5, 400, 3.5f32),
        ("model.layers.0.self_attn.q_proj.weight", 70, 2, -1.25),
        ("model.layers.0.mlp.up_proj.weight", 511, 255, 8.0),
        // Tied: the embedding row of token 108 ('l') and the output row of 108 both change.
        ("model.embed_tokens.weight", 108, 9, 2.0),
        ("lm_head.weight", 101, 200, -4.0),
    ] {
        let mut model = load(&ckpt);
        let tensor: WeightId = tensor.parse().unwrap();
        let edit = WeightEdit {
            tensor,
            row,
            col,
            value,
        };
        let edited = model
            .forward(
                &[TOKENS.to_vec()],
                None,
                &RunOptions {
                    interventions: vec![Interventions {
                        weight_edits: vec![edit],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
            .unwrap()
            .logits
            .unwrap();
        let plain = model
            .forward(&[TOKENS.to_vec()], None, &RunOptions::default())
            .unwrap()
            .logits
            .unwrap();
        model.set_weight_entry(tensor, row, col, value).unwrap();
        let physical = model
            .forward(&[TOKENS.to_vec()], None, &RunOptions::default())
            .unwrap()
            .logits
            .unwrap();
        assert!(
            max_diff(&edited, &physical) < 1e-5,
            "{tensor}: {}",
            max_diff(&edited, &physical)
        );
        assert!(
            max_diff(&edited, &plain) > 1e-4,
            "{tensor}: the edit changed nothing"
        );
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let (_d, ckpt) = tiny();
    let model = load(&ckpt);
    let run = |tokens: Vec<Vec<u32>>, iv: Vec<Interventions>| {
        model
            .forward(
                &tokens,
                None,
                &RunOptions {
                    interventions: iv,
                    ..Default::default()
                },
            )
            .err()
            .map(|e| e.to_string())
    };
    assert!(run(vec![vec![999]], vec![])
        .unwrap()
        .contains("outside the vocabulary"));
    assert!(run(vec![vec![1, 2], vec![3]], vec![])
        .unwrap()
        .contains("same length"));
    assert!(run(vec![vec![]], vec![])
        .unwrap()
        .contains("at least one token"));
    assert!(run(
        vec![vec![1]],
        vec![Interventions::ffn_mask(9, MaskMode::Zero, vec![0])]
    )
    .unwrap()
    .contains("layer 9"));
    assert!(run(
        vec![vec![1]],
        vec![Interventions::ffn_mask(0, MaskMode::Zero, vec![512])]
    )
    .unwrap()
    .contains("dim 512"));
    let edit = Interventions {
        weight_edits: vec![WeightEdit {
            tensor: WeightId::layer(0, Proj::Up),
            row: 512,
            col: 0,
            value: 1.0,
        }],
        ..Default::default()
    };
    assert!(run(vec![vec![1]], vec![edit])
        .unwrap()
        .contains("outside its shape"));
}

/// Every public function that takes an index returns an error (or None)
/// for one out of range, never a panic. The tiny model has 2 layers, d_ff 512.
#[test]
fn out_of_range_indices_are_errors() {
    let (_d, ckpt) = tiny();
    let mut model = load(&ckpt);
    let tok = ckpt.tokenizer().unwrap();
    let err = |r: Result<(), mwtop::model::ModelError>| r.unwrap_err().to_string();
    assert!(err(model.physically_zero_ffn_rows(2, &[0])).contains("layers 0..1"));
    assert!(err(model.physically_zero_ffn_rows(0, &[512])).contains("d_ff = 512"));
    let e = err(model.set_weight_entry(WeightId::layer(2, Proj::Down), 0, 0, 1.0));
    assert!(e.contains("model.layers.2.mlp.down_proj.weight"), "{e}");
    let e = err(model.set_weight_entry(WeightId::layer(0, Proj::Down), 256, 0, 1.0));
    assert!(e.contains("outside"), "{e}");
    assert!(model.weight(WeightId::layer(2, Proj::Up)).is_none());
    assert!(model.weight(WeightId::layer(1, Proj::Up)).is_some());
    let e = massive::rank_ffn_dims(&model, &TOKENS, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 2"), "{e}");
    let capture = RunOptions {
        capture: vec![CaptureRequest::at(5, HookPoint::MlpPost, Reduction::Full)],
        ..Default::default()
    };
    let e = model
        .forward(&[TOKENS.to_vec()], None, &capture)
        .err()
        .unwrap();
    assert!(e.to_string().contains("capture at layer 5"), "{e}");
    let state = vec![0f32; 512];
    assert!(target::row_stats(&model, 2, &[0], &state).is_err());
    assert!(target::row_stats(&model, 0, &[512], &state).is_err());
    assert!(target::row_stats(&model, 0, &[0], &state[..3]).is_err());
    let th = Thresholds::default();
    let e = target::resolve_target(&model, &tok, "hi", th, Some(2), None).unwrap_err();
    assert!(e.to_string().contains("--layer 2"), "{e}");
    let e = target::resolve_target(&model, &tok, "hi", th, None, Some(vec![600])).unwrap_err();
    assert!(e.to_string().contains("--dims: 600"), "{e}");
    // Captured::row past the batch, and the bisection median past the row.
    let one = RunOptions {
        capture: vec![CaptureRequest::at(
            0,
            HookPoint::MlpPost,
            Reduction::Position(0),
        )],
        ..Default::default()
    };
    let c = model
        .forward(&[TOKENS.to_vec()], None, &one)
        .unwrap()
        .captures
        .remove(0);
    assert_eq!(c.row(0).map(<[f32]>::len), Some(512));
    assert!(c.row(1).is_none());
    let a = candle_core::Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(hooks::kth_smallest_rows(&a, 4).is_err());
    assert!(hooks::kth_smallest_rows(&a, 3).is_ok());
}

#[test]
fn sliding_window_scores_every_token_once_in_its_first_window() {
    let (_d, ckpt) = tiny();
    let model = load(&ckpt);
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 250) as u32).collect();
    // One window covering everything equals the plain mean NLL.
    let full = perplexity(
        &model,
        &tokens,
        &[],
        Window {
            size: 64,
            stride: 32,
        },
    )
    .unwrap()
    .remove(0);
    let logits = model
        .forward(std::slice::from_ref(&tokens), None, &RunOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let lp = Model::next_token_logprobs(&logits.i(0).unwrap(), &tokens).unwrap();
    let mean = -lp.iter().map(|&v| v as f64).sum::<f64>() / 39.0;
    assert!((full.nll - mean).abs() < 1e-6);
    assert_eq!((full.scored, full.tokens), (39, 40));
    // Windows of 16 every 8: tokens 1..16 from window [0,16), then 16..24 from [8,24), ...
    let w = perplexity(
        &model,
        &tokens,
        &[],
        Window {
            size: 16,
            stride: 8,
        },
    )
    .unwrap()
    .remove(0);
    let mut nll = 0f64;
    let mut scored = 0;
    for begin in (0..).step_by(8) {
        let end = (begin + 16).min(40);
        let chunk = tokens[begin..end].to_vec();
        let lg = model
            .forward(std::slice::from_ref(&chunk), None, &RunOptions::default())
            .unwrap()
            .logits
            .unwrap();
        let lp = Model::next_token_logprobs(&lg.i(0).unwrap(), &chunk).unwrap();
        let first_new = if begin == 0 { 0 } else { 16 - 8 - 1 };
        for v in &lp[first_new..] {
            nll -= *v as f64;
            scored += 1;
        }
        if end == 40 {
            break;
        }
    }
    assert_eq!(scored, 39);
    assert!(
        (w.nll - nll / 39.0).abs() < 1e-6,
        "{} vs {}",
        w.nll,
        nll / 39.0
    );
    assert!(
        (w.nll - full.nll).abs() > 1e-6,
        "less context must change the score"
    );
}

/// A weight edit of NaN makes the logits NaN: generation refuses with one
/// line instead of sampling a token from them.
#[test]
fn generation_refuses_nan_logits() {
    let (_d, ckpt) = tiny();
    let model = load(&ckpt);
    let tok = ckpt.tokenizer().unwrap();
    let nan = Interventions {
        weight_edits: vec![WeightEdit {
            tensor: WeightId::layer(0, Proj::Up),
            row: 3,
            col: 0,
            value: f32::NAN,
        }],
        ..Default::default()
    };
    let err = generate(
        &model,
        &tok,
        &TOKENS,
        &[nan],
        &GenerateParams::default(),
        |_, _, _| ControlFlow::Continue(()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not numbers (NaN)"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let (_d, ckpt) = tiny();
    let model = load(&ckpt);
    let tok = ckpt.tokenizer().unwrap();
    let run = |seed: u64, temperature: f64, top_p: Option<f64>| {
        let params = GenerateParams {
            max_tokens: 24,
            temperature,
            top_p,
            seed,
            stop_at_eos: false,
            states: false,
            cancel: None,
        };
        generate(
            &model,
            &tok,
            &TOKENS,
            &[Interventions::none()],
            &params,
            |_, _, _| ControlFlow::Continue(()),
        )
        .unwrap()
        .remove(0)
        .tokens
    };
    assert_eq!(run(1, 1.0, Some(0.9)), run(1, 1.0, Some(0.9)));
    assert_ne!(run(1, 1.0, None), run(2, 1.0, None));
    assert_eq!(run(1, 0.0, None).len(), 24);
    // Greedy ignores the seed.
    assert_eq!(run(1, 0.0, None), run(2, 0.0, None));
    // Streaming sees every token, and cancelling stops at once.
    let mut seen = 0;
    let params = GenerateParams {
        max_tokens: 24,
        stop_at_eos: false,
        ..Default::default()
    };
    let out = generate(
        &model,
        &tok,
        &TOKENS,
        &[Interventions::none()],
        &params,
        |_, _, _| {
            seen += 1;
            if seen == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap()
    .remove(0);
    assert_eq!(out.tokens.len(), 5);
    assert_eq!(out.stop, mwtop::analysis::generate::StopReason::Cancelled);
}
