//! Every family layout against transformers 5.17: tiny random-weight models
//! with a planted massive weight, written by transformers' own
//! `save_pretrained`, and transformers' numbers for them
//! (tests/fixtures/families, scripts/reference_families.py). Settings mwtop
//! does not compute are refused with a clear one-line error.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use mwtop::analysis::generate::{generate, GenerateParams};
use mwtop::analysis::massive::{self, Thresholds};
use mwtop::analysis::perplexity::{perplexity, Window};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::intervention::{Interventions, MaskMode};
use mwtop::model::{LogitsMode, Model, RunOptions};
use serde_json::Value;

fn dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/families/{family}"))
}

/// The fixture's transformers numbers (beside a GGUF file, or in its directory).
fn reference(path: &Path) -> Value {
    let dir = if path.is_file() {
        path.parent().unwrap()
    } else {
        path
    };
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A copy of a fixture directory to edit (config.json) without touching it.
fn copy_of(src: &Path) -> tempfile::TempDir {
    let tmp = common::tempdir();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn load(path: &Path) -> Model {
    let ckpt = Checkpoint::open_path(path).unwrap();
    Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap()
}

fn logprobs(model: &Model, ids: &[u32]) -> Vec<f32> {
    let out = model
        .forward(&[ids.to_vec()], None, &RunOptions::default())
        .unwrap();
    Model::next_token_logprobs(&out.logits.unwrap().get(0).unwrap(), ids).unwrap()
}

fn assert_close(family: &str, what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{family} {what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(worst < tol, "{family} {what}: off by {worst:.2e}");
}

/// The per-layer maximum of |x| at a hook point, over tokens and dims.
fn layer_maxima(model: &Model, ids: &[u32], point: HookPoint) -> Vec<f32> {
    let opts = RunOptions {
        capture: vec![CaptureRequest::every_layer(point, Reduction::MaxAbsPerDim)],
        logits: LogitsMode::None,
        ..Default::default()
    };
    let out = model.forward(&[ids.to_vec()], None, &opts).unwrap();
    out.captures
        .iter()
        .map(|c| c.values.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect()
}

/// Everything transformers measured, measured again by mwtop.
fn check_family(family: &str, path: &Path) {
    let r = reference(path);
    let model = load(path);
    let bos_ids = u32s(&r["bos_ids"]);
    let plain = &bos_ids[1..];
    // The text (87 tokens) is longer than the sliding window (8).
    assert_close(
        family,
        "log-probs with BOS",
        &logprobs(&model, &bos_ids),
        &f64s(&r["logprobs_bos"]),
        1e-4,
    );
    assert_close(
        family,
        "log-probs without BOS",
        &logprobs(&model, plain),
        &f64s(&r["logprobs_plain"]),
        1e-4,
    );
    // Attention in tiles of one query (masks built on the device per tile)
    // and log-probabilities a chunk of positions at a time: the same numbers.
    let mut tiled = load(path);
    tiled.set_attention_budget(1);
    let chunked = tiled
        .forward(
            std::slice::from_ref(&bos_ids),
            None,
            &RunOptions {
                logits: mwtop::model::LogitsMode::NextToken,
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_close(
        family,
        "log-probs in attention tiles",
        &chunked,
        &f64s(&r["logprobs_bos"]),
        1e-4,
    );
    for (point, key) in [
        (HookPoint::ResidPost, "resid_max"),
        (HookPoint::MlpPost, "dff_max"),
    ] {
        let got = layer_maxima(&model, &bos_ids, point);
        for (g, w) in got.iter().zip(f64s(&r[key])) {
            assert!(
                (*g as f64 / w - 1.0).abs() < 1e-4,
                "{family} {key}: {g} vs {w}"
            );
        }
    }
    // Greedy continuation through the KV cache, across the window.
    let tok = Checkpoint::open_path(path).unwrap().tokenizer().unwrap();
    let params = GenerateParams {
        max_tokens: 8,
        stop_at_eos: false,
        ..Default::default()
    };
    let prompt = u32s(&r["greedy_prompt"]);
    let got = generate(
        &model,
        &tok,
        &prompt,
        &[Interventions::none()],
        &params,
        |_, _, _| ControlFlow::Continue(()),
    )
    .unwrap()
    .remove(0)
    .tokens;
    assert_eq!(got, u32s(&r["greedy"]), "{family} greedy ids");
    // Cached decoding one token at a time equals the reference log-probs.
    let mut cache = model.new_cache();
    let opts = RunOptions::default();
    let first = 5;
    let out = model
        .forward(&[bos_ids[..first].to_vec()], Some(&mut cache), &opts)
        .unwrap();
    let logits = out.logits.unwrap().get(0).unwrap();
    let mut lp = Model::next_token_logprobs(&logits, &bos_ids[..first]).unwrap();
    let log_softmax = |row: candle_core::Tensor| {
        let logz = row.exp().unwrap().sum_all().unwrap().log().unwrap();
        row.broadcast_sub(&logz).unwrap().to_vec1::<f32>().unwrap()
    };
    lp.push(log_softmax(logits.get(first - 1).unwrap())[bos_ids[first] as usize]);
    for p in first..bos_ids.len() - 1 {
        let out = model
            .forward(&[vec![bos_ids[p]]], Some(&mut cache), &opts)
            .unwrap();
        let row = out.logits.unwrap().get(0).unwrap().get(0).unwrap();
        lp.push(log_softmax(row)[bos_ids[p + 1] as usize]);
    }
    assert_close(
        family,
        "cached log-probs",
        &lp,
        &f64s(&r["logprobs_bos"]),
        1e-4,
    );
    // The planted massive weight: the scan's ranking at the planted layer.
    let layer = r["plant_layer"].as_u64().unwrap() as usize;
    let (ranked, _) = massive::rank_ffn_dims(&model, &bos_ids, layer).unwrap();
    let top: Vec<u32> = ranked.iter().take(2).map(|&d| d as u32).collect();
    assert_eq!(top, u32s(&r["dff_top_at_bos"])[..2], "{family} top dims");
    let scan = massive::scan(&model, &tok, &bos_ids, "bos", 4, Thresholds::default()).unwrap();
    assert_eq!(scan.layers.len(), 3);
    // Attacks equal transformers with the rows physically zeroed.
    let dims: Vec<usize> = ranked[..2].to_vec();
    let rows = [
        Interventions::none(),
        Interventions::ffn_mask(layer, MaskMode::Zero, dims.clone()),
        Interventions::ffn_mask(layer, MaskMode::Keep, dims),
    ];
    let got = perplexity(&model, &bos_ids, &rows, Window::default_for(&model)).unwrap();
    for (g, key) in got
        .iter()
        .zip(["perplexity", "perplexity_zero_top2", "perplexity_keep_top2"])
    {
        let want = r[key].as_f64().unwrap();
        assert!(
            (g.perplexity / want - 1.0).abs() < 1e-4,
            "{family} {key}: {} vs {want}",
            g.perplexity
        );
    }
}

#[test]
fn llama_in_transformers_5_layout_with_llama3_rope() {
    check_family("llama", &dir("llama"));
}

#[test]
fn llama_in_the_classic_layout_sharded_with_linear_rope() {
    check_family("llama_classic", &dir("llama_classic"));
}

#[test]
fn qwen2_with_qkv_biases() {
    check_family("qwen2", &dir("qwen2"));
}

#[test]
fn mistral_sliding_window() {
    check_family("mistral", &dir("mistral"));
}

#[test]
fn qwen2_sliding_window_from_max_window_layers() {
    check_family("qwen2_swa", &dir("qwen2_swa"));
    // Without layer_types the window comes from use_sliding_window and
    // max_window_layers alone, as Qwen2Config derives it.
    let tmp = copy_of(&dir("qwen2_swa"));
    let cfg = tmp.path().join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    assert!(v.as_object_mut().unwrap().remove("layer_types").is_some());
    std::fs::write(&cfg, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    check_family("qwen2_swa without layer_types", tmp.path());
}

/// The sliding window holds in the scan's path too: the windowed model is
/// not the full-attention one.
#[test]
fn the_window_changes_what_late_tokens_see() {
    let path = dir("mistral");
    let tmp = copy_of(&path);
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"sliding_window\": 8", "\"sliding_window\": null"),
    )
    .unwrap();
    let r = reference(&path);
    let ids = u32s(&r["bos_ids"]);
    let windowed = logprobs(&load(&path), &ids);
    let full = logprobs(&load(tmp.path()), &ids);
    // The first 8 positions see the same keys; later ones do not.
    assert_close(
        "mistral",
        "inside the window",
        &full[..7],
        &windowed[..7].iter().map(|&x| x as f64).collect::<Vec<_>>(),
        1e-6,
    );
    let differs = full[10..]
        .iter()
        .zip(&windowed[10..])
        .any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(differs, "a window of 8 must change later log-probs");
}

#[test]
fn qwen3_per_head_qk_norm() {
    check_family("qwen3", &dir("qwen3"));
}

#[test]
fn phi3_fused_projections_and_partial_rotary() {
    check_family("phi3", &dir("phi3"));
}

#[test]
fn olmo2_post_norms_and_whole_projection_qk_norm() {
    check_family("olmo2", &dir("olmo2"));
}

#[test]
fn gemma2_four_norms_softcaps_and_alternating_windows() {
    check_family("gemma2", &dir("gemma2"));
}

#[test]
fn gemma3_local_and_global_rope_and_qk_norm() {
    check_family("gemma3", &dir("gemma3"));
}

/// Settings that change the math and that mwtop does not compute are
/// refused by the key's name, never run approximately.
#[test]
fn unimplemented_settings_are_refused_by_name() {
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "\"vocab_size\": 260",
            "\"vocab_size\": 260, \"use_bidirectional_attention\": true",
            &["use_bidirectional_attention", "not implemented"],
        ),
        (
            "\"rope_type\": \"llama3\"",
            "\"rope_type\": \"yarn\"",
            &["rope_parameters.rope_type", "yarn", "not implemented"],
        ),
        (
            "\"rope_type\": \"llama3\"",
            "\"rope_type\": \"dynamic\"",
            &["dynamic", "not implemented"],
        ),
        (
            "\"vocab_size\": 260",
            "\"vocab_size\": 260, \"num_local_experts\": 8",
            &["num_local_experts = 8", "mixture-of-experts"],
        ),
        (
            "\"hidden_act\": \"silu\"",
            "\"hidden_act\": \"relu2\"",
            &["hidden_act \"relu2\" is not implemented"],
        ),
        (
            "\"rope_type\": \"llama3\"",
            "\"rope_type\": \"llama3\", \"partial_rotary_factor\": 2.0",
            &["partial_rotary_factor 2", "(0, 1]"],
        ),
        (
            "\"vocab_size\": 260",
            "\"vocab_size\": 260, \"rope_scaling\": {\"rope_type\": \"longrope\"}",
            &["rope_scaling.rope_type", "longrope"],
        ),
    ];
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/eval.txt");
    for (from, to, needles) in cases {
        let tmp = copy_of(&dir("llama"));
        let cfg = tmp.path().join("config.json");
        let t = std::fs::read_to_string(&cfg).unwrap();
        assert!(t.contains(from), "{from}");
        std::fs::write(&cfg, t.replacen(from, to, 1)).unwrap();
        let out = common::mwtop(&[
            "eval",
            common::path_str(tmp.path()),
            "--text",
            common::path_str(&text),
            "--device",
            "cpu",
        ]);
        common::assert_one_line_error(&out, needles);
    }
}

/// A layer_types list of the wrong length is an inconsistent config.
#[test]
fn layer_types_must_name_every_layer() {
    let tmp = copy_of(&dir("qwen2_swa"));
    let cfg = tmp.path().join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
    std::fs::write(&cfg, serde_json::to_string(&v).unwrap()).unwrap();
    let out = common::mwtop(&["inspect", common::path_str(tmp.path())]);
    common::assert_one_line_error(
        &out,
        &["layer_types lists 2 layers", "num_hidden_layers is 3"],
    );
}

/// Families that normalize the MLP's output report that norm's scale at a
/// hidden dim: Gemma's (1 + w) as stored by transformers, ranked in its layer.
#[test]
fn post_mlp_norm_scales_are_gemmas_one_plus_w() {
    use mwtop::analysis::norms::post_mlp_norm_scales;
    let ckpt = Checkpoint::open_path(&dir("gemma3")).unwrap();
    let model = load(&dir("gemma3"));
    let scales = post_mlp_norm_scales(&model, &[5, 9999]).unwrap();
    assert_eq!(scales.len(), 1, "dims past d_model are skipped");
    assert_eq!(scales[0].dim, 5);
    for s in &scales[0].layers {
        let name = format!("model.layers.{}.post_feedforward_layernorm.weight", s.layer);
        let w = ckpt
            .tensor(&name, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(s.scale, 1.0 + w[5], "layer {}", s.layer);
        let larger = w
            .iter()
            .filter(|x| (1.0 + *x).abs() > (1.0 + w[5]).abs())
            .count();
        assert_eq!(s.rank, larger + 1);
    }
    // Llama normalizes before the MLP only: nothing to report.
    assert!(post_mlp_norm_scales(&load(&dir("llama")), &[5])
        .unwrap()
        .is_empty());
}

/// What `convert` writes as config.json reads back as the same model, for
/// every family's layout (windows, local RoPE, partial rotary, Gemma's caps).
#[test]
fn configs_round_trip_through_the_written_config_json() {
    for family in [
        "llama",
        "llama_classic",
        "qwen2",
        "qwen2_swa",
        "mistral",
        "qwen3",
        "phi3",
        "olmo2",
        "gemma2",
        "gemma3",
    ] {
        let ckpt = Checkpoint::open_path(&dir(family)).unwrap();
        let cfg = ckpt.config();
        let text = serde_json::to_string(&cfg.to_hf_json("float32")).unwrap();
        let mut back =
            mwtop::checkpoint::ModelConfig::from_hf_json(Path::new("config.json"), &text).unwrap();
        // The pattern may come back spelled as a list: the same windows.
        let windows = |c: &mwtop::checkpoint::ModelConfig| -> Vec<Option<usize>> {
            (0..c.n_layers).map(|i| c.attention.window(i)).collect()
        };
        assert_eq!(windows(&back), windows(cfg), "{family}");
        back.attention.pattern = cfg.attention.pattern.clone();
        assert_eq!(&back, cfg, "{family}");
    }
}

/// The same families as GGUF files in llama.cpp's conventions
/// (scripts/families_to_gguf.py: gguf-py's names and keys, Gemma's norms
/// stored as 1 + w), each checked by llama.cpp itself when written: mwtop
/// reading them equals transformers, and llama.cpp.
#[test]
fn gguf_files_of_the_families_match_transformers_and_llama_cpp() {
    for (family, llamacpp_tol) in [
        ("qwen2", 1e-4),
        ("qwen3", 1e-4),
        ("olmo2", 1e-4),
        // llama.cpp's GELU differs from PyTorch's tanh form by ~1e-3 here.
        ("gemma2", 3e-3),
        // Fused attn_qkv and ffn_up, rope.dimension_count = half a head.
        ("phi3", 1e-4),
    ] {
        let path = dir(family).join("model.gguf");
        let ckpt = Checkpoint::open_path(&path).unwrap();
        assert_eq!(ckpt.format(), mwtop::checkpoint::Format::Gguf);
        check_family(&format!("{family} GGUF"), &path);
        let text = std::fs::read_to_string(dir(family).join("llamacpp.json")).unwrap();
        let lc: Value = serde_json::from_str(&text).unwrap();
        let ids = u32s(&lc["bos_ids"]);
        let got = logprobs(&load(&path), &ids);
        assert_close(
            family,
            "log-probs against llama.cpp",
            &got,
            &f64s(&lc["logprobs_bos"]),
            llamacpp_tol,
        );
    }
}

/// Phi-3's q/k rows are held in rotary order: an edit of one q or k entry,
/// as a run's intervention and made for good, equals the same entry edited
/// in the checkpoint file itself, and the model's weight reads back in
/// Hugging Face's row order.
#[test]
fn phi3_q_and_k_edits_address_hugging_face_rows() {
    use mwtop::checkpoint::{Proj, WeightId};
    use mwtop::model::intervention::WeightEdit;
    let src = dir("phi3");
    let ids = u32s(&reference(&src)["bos_ids"]);
    let nq_rows = 4 * 16;
    // q row 21 = head 1, dim 5 (rotates, held at dim 9); k row 25 = head
    // 1, dim 9 (passes through, held at dim 5).
    for (proj, row, col, value) in [(Proj::Q, 21usize, 3usize, 2.5f32), (Proj::K, 25, 40, -3.0)] {
        let fused_row = match proj {
            Proj::Q => row,
            _ => nq_rows + row,
        };
        // The file with qkv_proj[fused_row, col] = value.
        let tmp = copy_of(&src);
        let file = tmp.path().join("model.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
            .collect();
        let (_, shape, data) = owned
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.1.self_attn.qkv_proj.weight")
            .unwrap();
        let at = (fused_row * shape[1] + col) * 4;
        data[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let views: Vec<(String, safetensors::tensor::TensorView)> = owned
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &file).unwrap();
        let from_file = logprobs(&load(tmp.path()), &ids);

        let mut model = load(&src);
        let id = WeightId::layer(1, proj);
        let w = model.weight(id).unwrap();
        let ckpt = Checkpoint::open_path(&src).unwrap();
        let qkv = ckpt
            .tensor(
                "model.layers.1.self_attn.qkv_proj.weight",
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let start = if proj == Proj::Q { 0 } else { nq_rows };
        let want = qkv.narrow(0, start, w.dim(0).unwrap()).unwrap();
        let diff = (w - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(
            diff.to_scalar::<f32>().unwrap(),
            0.0,
            "{id} rows out of order"
        );
        let plain = logprobs(&model, &ids);
        let edit = WeightEdit {
            tensor: id,
            row,
            col,
            value,
        };
        let out = model
            .forward(
                std::slice::from_ref(&ids),
                None,
                &RunOptions {
                    interventions: vec![mwtop::model::intervention::Interventions {
                        weight_edits: vec![edit],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
            .unwrap();
        let edited =
            Model::next_token_logprobs(&out.logits.unwrap().get(0).unwrap(), &ids).unwrap();
        model.set_weight_entry(id, row, col, value).unwrap();
        let set = logprobs(&model, &ids);
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        assert!(
            worst(&from_file, &plain) > 1e-3,
            "{id}: the edit changed nothing"
        );
        assert!(
            worst(&edited, &from_file) < 1e-5,
            "{id}: {}",
            worst(&edited, &from_file)
        );
        assert!(
            worst(&set, &from_file) < 1e-5,
            "{id}: {}",
            worst(&set, &from_file)
        );
    }
}
