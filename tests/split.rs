//! Layers split over several devices (`--device a,b,...`) compute what one
//! device computes. CI has no GPU, so the split runs over `cpu,cpu`: every
//! group boundary, per-device cache, capture, mask, edit and head copy
//! takes the split code path (the GPU machine runs `cuda:0,cpu` in
//! scripts/gpu-check.sh, where the boundaries move real memory).

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mwtop::checkpoint::{Checkpoint, Proj, WeightId};
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::intervention::{Interventions, MaskMode, WeightEdit};
use mwtop::model::{Model, RunOptions, WeightPrecision};

const TOKENS: [u32; 9] = [256, 72, 101, 108, 108, 111, 32, 119, 111];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/families/{family}"))
}

fn load(path: &Path, devices: usize) -> Model {
    let ckpt = Checkpoint::open_path(path).unwrap();
    let devices = vec![Device::Cpu; devices];
    Model::load_on(
        &ckpt,
        &devices,
        DType::F32,
        WeightPrecision::Compute,
        |_, _| {},
    )
    .unwrap()
}

fn run(model: &Model, opts: &RunOptions) -> (Tensor, Vec<Vec<f32>>) {
    let out = model.forward(&[TOKENS.to_vec()], None, opts).unwrap();
    let captures = out.captures.into_iter().map(|c| c.values).collect();
    (out.logits.unwrap(), captures)
}

fn every_capture() -> RunOptions {
    RunOptions {
        capture: vec![
            CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MaxAbsPerDim),
            CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::MaxAbsPerDim),
        ],
        ..Default::default()
    }
}

#[test]
fn every_family_split_two_and_three_ways_computes_what_one_device_does() {
    for family in ["llama", "gemma3", "gemma2", "phi3", "qwen2_swa", "olmo2"] {
        let one = load(&fixture(family), 1);
        let (want, want_captures) = run(&one, &every_capture());
        assert!(!want_captures.is_empty());
        for n in [2, 3] {
            let split = load(&fixture(family), n);
            let groups = split.placement().groups();
            assert_eq!(groups.len(), n, "{family}");
            // The layers really are spread: the last device holds some.
            assert!(!groups[n - 1].1.is_empty(), "{family}: {groups:?}");
            let (got, captures) = run(&split, &every_capture());
            assert_eq!(common::max_diff(&want, &got), 0.0, "{family} over {n}");
            assert_eq!(captures, want_captures, "{family} over {n}: captures");
        }
    }
}

#[test]
fn decoding_a_pair_with_the_cache_is_the_same_split() {
    let path = fixture("gemma3");
    let (one, split) = (load(&path, 1), load(&path, 2));
    let plain = RunOptions::default();
    let (mut c1, mut c2) = (one.new_cache(), split.new_cache());
    for (i, pair) in TOKENS.chunks_exact(2).enumerate() {
        let batch = [vec![pair[0]], vec![pair[1]]];
        let a = one.forward(&batch, Some(&mut c1), &plain).unwrap();
        let b = split.forward(&batch, Some(&mut c2), &plain).unwrap();
        let diff = common::max_diff(&a.logits.unwrap(), &b.logits.unwrap());
        assert_eq!(diff, 0.0, "step {i}");
    }
}

#[test]
fn attacks_and_edits_on_a_split_model_equal_those_on_one_device() {
    // Gemma 3's fixture ties its head to the embedding: a split holds a
    // copy of it on the last device, which an embedding edit must follow.
    let path = fixture("gemma3");
    let (mut one, mut split) = (load(&path, 1), load(&path, 2));
    let last = split.config().n_layers - 1;
    assert_ne!(
        split.placement().layer_index(last),
        split.placement().layer_index(0)
    );
    let d_ff = split.config().d_ff;
    let attack = RunOptions {
        interventions: vec![Interventions {
            weight_edits: vec![WeightEdit {
                tensor: WeightId::layer(last, Proj::Down),
                row: 5,
                col: 7,
                value: 3.5,
            }],
            ..Interventions::ffn_mask(last, MaskMode::Zero, vec![0, 17, d_ff - 1])
        }],
        ..Default::default()
    };
    let (a, _) = run(&one, &attack);
    let (b, _) = run(&split, &attack);
    assert_eq!(common::max_diff(&a, &b), 0.0, "attacked");
    for m in [&mut one, &mut split] {
        m.physically_zero_ffn_rows(last, &[3, 4]).unwrap();
        m.set_weight_entry(WeightId::Embed, 72, 5, 9.0).unwrap();
    }
    let (a, _) = run(&one, &RunOptions::default());
    let (b, _) = run(&split, &RunOptions::default());
    assert_eq!(common::max_diff(&a, &b), 0.0, "edited for good");
    // Over `cpu,cpu` the "copy" of the tied head is the embedding itself
    // (one device, one memory), so nothing is counted twice; each device
    // counts what it holds.
    assert_eq!(split.weight_bytes(), one.weight_bytes());
    let per = split.weight_bytes_per_device();
    assert_eq!(per.len(), 2);
    assert!(per.iter().all(|&b| b > 0), "{per:?}");
    assert_eq!(per.iter().sum::<usize>(), one.weight_bytes());
    assert_eq!(one.weight_bytes_per_device(), vec![one.weight_bytes()]);
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = common::mwtop(args);
    assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    serde_json::from_str(&common::stdout(&out)).unwrap()
}

#[test]
fn the_cli_splits_over_a_device_list_and_refuses_bad_lists() {
    // The planted model: a massive layer and massive weights to find.
    let dir = common::tempdir();
    mwtop::synthetic::Spec::planted()
        .write_hf_dir(dir.path(), safetensors::Dtype::F32)
        .unwrap();
    let model = common::path_str(dir.path());
    let scan = |device: &str| json(&["scan", model, "--device", device, "--json"]);
    let (one, split) = (scan("cpu"), scan("cpu,cpu"));
    for key in [
        "layers",
        "massive_layer",
        "massive_weights",
        "super_weights",
    ] {
        assert!(!one[key].is_null(), "{key}");
        assert_eq!(one[key], split[key], "{key}");
    }
    let generate = |device: &str| {
        json(&[
            "generate",
            model,
            "--prompt",
            "hello",
            "--max-tokens",
            "6",
            "--device",
            device,
            "--json",
        ])["tokens"]
            .clone()
    };
    assert_eq!(generate("cpu"), generate("cpu, cpu ,cpu"));
    for bad in ["cpu,", ",cpu", "cpu,,cpu", "cpu,tpu"] {
        let out = common::mwtop(&["generate", model, "--prompt", "a", "--device", bad]);
        common::assert_one_line_error(&out, &["--device"]);
    }
}

#[test]
fn zero_shot_tasks_and_training_split_give_one_devices_numbers() {
    let model = fixture("llama");
    let m = common::path_str(&model);
    // The fixture's requests that fit the tiny model's 512-byte context.
    let all = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks/requests.jsonl"),
    )
    .unwrap();
    let short: Vec<&str> = all.lines().filter(|l| l.len() < 400).collect();
    assert!(short.len() > 100, "{} short requests", short.len());
    let dir = common::tempdir();
    let requests = dir.path().join("short.jsonl");
    std::fs::write(&requests, short.join("\n")).unwrap();
    let tasks = |device: &str| {
        let v = json(&[
            "tasks",
            m,
            "--requests",
            common::path_str(&requests),
            "--limit",
            "5",
            "--device",
            device,
            "--json",
            "--per-request",
        ]);
        v["tasks"].clone()
    };
    let (one, split) = (tasks("cpu"), tasks("cpu,cpu"));
    assert!(one.as_array().is_some_and(|t| !t.is_empty()));
    // Shared prefixes, copied caches and branched rows: the same scores.
    assert_eq!(one, split);

    let data = dir.path().join("data.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"instruction": format!("Count to {}.", i + 2), "input": "",
                               "output": "1 2 3 4 5".chars().take(2 * i + 3).collect::<String>()})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let losses = |device: &str| {
        let out = dir
            .path()
            .join(format!("adapter-{}", device.replace(',', "-")));
        let v = json(&[
            "finetune",
            m,
            "--data",
            common::path_str(&data),
            "--out",
            common::path_str(&out),
            "--steps",
            "2",
            "--batch",
            "2",
            "--lora-rank",
            "2",
            "--macdrop",
            "--layer",
            "1",
            "--k",
            "2",
            "--device",
            device,
            "--json",
        ]);
        v["losses"].clone()
    };
    let (one, split) = (losses("cpu"), losses("cpu,cpu"));
    assert_eq!(one.as_array().map(Vec::len), Some(2));
    // Gradients flow back across the boundary: the same updates.
    assert_eq!(one, split);
}
