//! LoRA training with MacDrop: the differentiable forward's gradients equal
//! finite differences (f64), MacDrop's masks equal zeroing the dropped
//! elements in the weights, adapters round-trip through PEFT's format and
//! merge exactly, training lowers the loss, and a resumed run ends where
//! an uninterrupted one does.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use mwtop::checkpoint::adapter::AdapterFile;
use mwtop::checkpoint::{Checkpoint, Proj, WeightId};
use mwtop::model::intervention::Interventions;
use mwtop::model::lora::{Lora, RowDrop};
use mwtop::model::{Model, RunOptions};
use mwtop::rng::SplitMix64;
use mwtop::train::data::Example;
use mwtop::train::loss::{summed_loss, Batch};
use mwtop::train::macdrop::{MacDrop, Schedule};
use mwtop::train::{self, TrainConfig};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/families/{family}"))
}

fn load(family: &str, dtype: DType) -> Model {
    let ckpt = Checkpoint::open_path(&fixture(family)).unwrap();
    Model::load(&ckpt, &Device::Cpu, dtype, |_, _| {}).unwrap()
}

const ALL: [Proj; 7] = Proj::ALL;

/// Adapters with A and B both random (PEFT starts B at zero, where B's
/// gradient alone is non-zero).
fn random_lora(model: &Model, rank: usize, seed: u64) -> Lora {
    let lora = Lora::init(model, &ALL, rank, 2.0 * rank as f64, seed).unwrap();
    let mut rng = SplitMix64::new(seed + 1);
    for (_, pair) in lora.pairs() {
        let (out, r) = pair.b.dims2().unwrap();
        let v: Vec<f64> = (0..out * r).map(|_| rng.next_f64() * 0.2 - 0.1).collect();
        let t = Tensor::from_vec(v, (out, r), &Device::Cpu)
            .unwrap()
            .to_dtype(pair.b.dtype())
            .unwrap();
        pair.b.set(&t).unwrap();
    }
    lora
}

fn examples() -> Vec<Example> {
    vec![
        Example {
            ids: vec![256, 72, 101, 108, 108, 111, 32, 119],
            loss_from: 4,
        },
        Example {
            ids: vec![256, 97, 98, 99],
            loss_from: 1,
        },
    ]
}

fn mean_loss(model: &Model, lora: &Arc<Lora>, drop: Option<RowDrop>, batch: &Batch) -> Tensor {
    (summed_loss(model, lora, drop, &Interventions::none(), batch).unwrap()
        / batch.counted() as f64)
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// d loss / d theta by backprop against central differences, for entries
/// of A and B in the first and last layers, with and without MacDrop.
#[test]
fn gradients_equal_finite_differences() {
    for family in ["llama", "gemma3", "qwen3"] {
        let model = load(family, DType::F64);
        let lora = Arc::new(random_lora(&model, 4, 11));
        let ex = examples();
        let batch = Batch::new(&ex.iter().collect::<Vec<_>>(), 0);
        let last = model.config().n_layers - 1;
        let d_model = model.config().d_model;
        let drop = RowDrop::draw(
            1,
            &[3, 7],
            d_model,
            0.5,
            &mut SplitMix64::new(3),
            DType::F64,
            &Device::Cpu,
        )
        .unwrap();
        for drop in [None, Some(drop)] {
            let loss = mean_loss(&model, &lora, drop.clone(), &batch);
            let grads = loss.backward().unwrap();
            let mut checked = 0;
            for (id, entries) in [
                (
                    WeightId::layer(0, Proj::Q),
                    [(0usize, 0usize, true), (1, 2, false)],
                ),
                (
                    WeightId::layer(1, Proj::Gate),
                    [(3, 5, true), (7, 1, false)],
                ),
                (
                    WeightId::layer(last, Proj::Down),
                    [(2, 9, true), (5, 3, false)],
                ),
                (
                    WeightId::layer(last, Proj::V),
                    [(1, 1, true), (0, 3, false)],
                ),
            ] {
                let pair = lora.get(id).unwrap();
                for (row, col, is_a) in entries {
                    let var = if is_a { &pair.a } else { &pair.b };
                    let g = grads
                        .get(var.as_tensor())
                        .expect("a gradient reaches the adapter");
                    let g = g.i((row, col)).unwrap().to_scalar::<f64>().unwrap();
                    let base = var.as_tensor().copy().unwrap();
                    let h = 1e-5;
                    let at = |delta: f64| {
                        let mut v = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                        v[row * base.dim(1).unwrap() + col] += delta;
                        var.set(&Tensor::from_vec(v, base.shape(), &Device::Cpu).unwrap())
                            .unwrap();
                        let l = scalar(&mean_loss(&model, &lora, drop.clone(), &batch));
                        var.set(&base).unwrap();
                        l
                    };
                    let fd = (at(h) - at(-h)) / (2.0 * h);
                    assert!(
                        // Rounding of the two f64 losses (~5e-15 / 2h)
                        // bounds what finite differences can tell.
                        (fd - g).abs() <= 2e-9 + 1e-6 * g.abs(),
                        "{family} {id} {} [{row}, {col}] (drop {}): backprop {g:e}, finite differences {fd:e}",
                        if is_a { "A" } else { "B" },
                        drop.is_some()
                    );
                    assert!(
                        g.abs() > 1e-8,
                        "{family} {id}: a zero gradient proves nothing"
                    );
                    checked += 1;
                }
            }
            assert_eq!(checked, 8);
        }
    }
}

/// A MacDrop mask in the forward equals the model whose dropped elements
/// of W_gate and W_up were set to zero in the weights, and the weights are
/// unchanged afterwards.
#[test]
fn row_dropout_equals_zeroing_the_dropped_elements() {
    let model = load("llama", DType::F64);
    let mut zeroed = load("llama", DType::F64);
    let (layer, rows) = (1, vec![5usize, 0, 17]);
    let d_model = model.config().d_model;
    let drop = RowDrop::draw(
        layer,
        &rows,
        d_model,
        0.6,
        &mut SplitMix64::new(9),
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    assert!(drop.dropped > 0);
    let keep = drop.keep.to_vec2::<f64>().unwrap();
    for proj in [Proj::Gate, Proj::Up] {
        let id = WeightId::layer(layer, proj);
        let w = model.weight(id).unwrap().to_vec2::<f64>().unwrap();
        let mut delta = vec![vec![0f64; d_model]; w.len()];
        for (i, &r) in rows.iter().enumerate() {
            for c in 0..d_model {
                if keep[i][c] == 0.0 {
                    delta[r][c] = -w[r][c];
                }
            }
        }
        let delta = Tensor::new(delta, &Device::Cpu).unwrap();
        zeroed.add_to_weight(id, &delta).unwrap();
    }
    let tokens = vec![vec![256u32, 10, 20, 30, 40], vec![256, 50, 60, 70, 80]];
    // f64 runs take the composed ops (candle's fused kernels have no f64).
    let exact = RunOptions {
        differentiable: true,
        ..RunOptions::default()
    };
    let opts = RunOptions {
        row_drop: Some(drop),
        ..exact.clone()
    };
    let dropped = model.forward(&tokens, None, &opts).unwrap().logits.unwrap();
    let want = zeroed
        .forward(&tokens, None, &exact)
        .unwrap()
        .logits
        .unwrap();
    let plain = model
        .forward(&tokens, None, &exact)
        .unwrap()
        .logits
        .unwrap();
    let diff = |a: &Tensor, b: &Tensor| scalar(&(a - b).unwrap().abs().unwrap().max_all().unwrap());
    assert!(diff(&dropped, &want) < 1e-10, "{}", diff(&dropped, &want));
    assert!(diff(&dropped, &plain) > 1e-4, "the mask changed nothing");
}

/// An adapter written in PEFT's format reads back bit for bit, and merged
/// into the weights it computes what the unmerged adapter computes.
#[test]
fn adapters_round_trip_and_merge_exactly() {
    let model = load("gemma3", DType::F32);
    let lora = random_lora(&model, 3, 5);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    train::adapter_file(&lora, Some("fixture".into()))
        .unwrap()
        .write(&out)
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 3);
    assert_eq!(config["lora_alpha"], 6.0);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);
    let file = AdapterFile::read(&out).unwrap();
    assert_eq!(file.tensors.len(), 7 * model.config().n_layers);
    let back = Lora::from_tensors(&model, file.rank, file.alpha, file.tensors.clone()).unwrap();
    for ((ia, pa), (ib, pb)) in lora.pairs().zip(back.pairs()) {
        assert_eq!(ia, ib);
        for (x, y) in [(&pa.a, &pb.a), (&pa.b, &pb.b)] {
            let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(x, y, "{ia}");
        }
    }
    let tokens = vec![vec![256u32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]];
    let on_the_fly = model
        .forward(
            &tokens,
            None,
            &RunOptions {
                lora: Some(Arc::new(back)),
                ..RunOptions::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    let mut merged = load("gemma3", DType::F32);
    merged.merge_lora(&lora).unwrap();
    let m = merged
        .forward(&tokens, None, &RunOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let base = model
        .forward(&tokens, None, &RunOptions::default())
        .unwrap()
        .logits
        .unwrap();
    let diff = |a: &Tensor, b: &Tensor| scalar(&(a - b).unwrap().abs().unwrap().max_all().unwrap());
    assert!(diff(&on_the_fly, &m) < 1e-4, "{}", diff(&on_the_fly, &m));
    assert!(
        diff(&on_the_fly, &base) > 1e-2,
        "the adapter changed nothing"
    );
}

fn pattern_examples() -> Vec<Example> {
    (0..24)
        .map(|i| {
            let mut ids = vec![256u32];
            ids.extend((0..12).map(|j| 97 + ((i + j) % 3) as u32));
            Example { ids, loss_from: 1 }
        })
        .collect()
}

fn config(out: &Path, steps: Option<usize>, macdrop: Option<MacDrop>) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        max_steps: steps,
        batch: 4,
        grad_accum: 2,
        lr: 2e-2,
        warmup: 0.1,
        seed: 1,
        macdrop,
        save_every: Some(2),
        out: out.to_path_buf(),
        base_model: None,
        data: "pattern".into(),
    }
}

#[test]
fn training_lowers_the_loss_with_and_without_macdrop() {
    let model = load("llama", DType::F32);
    let ex = pattern_examples();
    let dir = tempfile::tempdir().unwrap();
    let macdrop = MacDrop {
        layer: 1,
        rows: vec![0, 1, 2, 3, 4],
        p0: 0.8,
        schedule: Schedule::Step,
        seed: 2,
    };
    for md in [None, Some(macdrop)] {
        let out = dir.path().join(format!("run-{}", md.is_some()));
        let lora = Lora::init(&model, &ALL, 8, 16.0, 4).unwrap();
        let cfg = config(&out, Some(12), md);
        let stop = AtomicBool::new(false);
        let mut ps = Vec::new();
        let done = train::train(&model, lora, &ex, &cfg, None, &stop, |r| ps.push(r.p)).unwrap();
        let l = &done.state.losses;
        assert_eq!(l.len(), 12);
        assert!(done.state.finished && !done.interrupted);
        let tail = l[9..].iter().sum::<f64>() / 3.0;
        assert!(tail < 0.6 * l[0], "losses {l:?}");
        if cfg.macdrop.is_some() {
            assert_eq!(ps[0], Some(0.8));
            assert!((ps[6].unwrap() - 0.8 * (1.0 - 6.0 / 12.0)).abs() < 1e-12);
        } else {
            assert!(ps.iter().all(Option::is_none));
        }
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(train::STATE_FILE)).unwrap())
                .unwrap();
        assert_eq!(state["step"], 12);
        assert!(out.join("adapter_model.safetensors").is_file());
    }
}

/// Interrupted after 3 of 6 updates and resumed, a run ends with the
/// adapter the uninterrupted run ends with, bit for bit.
#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let model = load("llama", DType::F32);
    let ex = pattern_examples();
    let dir = tempfile::tempdir().unwrap();
    let md = MacDrop {
        layer: 0,
        rows: vec![1, 2],
        p0: 0.5,
        schedule: Schedule::Step,
        seed: 3,
    };
    let whole = dir.path().join("whole");
    let lora = Lora::init(&model, &ALL, 4, 8.0, 7).unwrap();
    let stop = AtomicBool::new(false);
    let cfg = config(&whole, Some(6), Some(md.clone()));
    train::train(&model, lora, &ex, &cfg, None, &stop, |_| {}).unwrap();

    let part = dir.path().join("part");
    let cfg = config(&part, Some(6), Some(md));
    let lora = Lora::init(&model, &ALL, 4, 8.0, 7).unwrap();
    let first = train::train(&model, lora, &ex, &cfg, None, &stop, |r| {
        if r.step == 3 {
            stop.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert!(first.interrupted);
    assert_eq!(first.state.step, 3);
    stop.store(false, Ordering::Relaxed);
    let saved = train::read_state(&part).unwrap();
    let file = AdapterFile::read(&part).unwrap();
    let lora = Lora::from_tensors(&model, file.rank, file.alpha, file.tensors).unwrap();
    let resumed = train::train(&model, lora, &ex, &cfg, Some(saved), &stop, |_| {}).unwrap();
    assert_eq!(resumed.state.step, 6);
    assert!(resumed.state.finished);
    let a = AdapterFile::read(&whole).unwrap();
    let b = AdapterFile::read(&part).unwrap();
    for ((ia, (aa, ab)), (_, (ba, bb))) in a.tensors.iter().zip(&b.tensors) {
        for (x, y) in [(aa, ba), (ab, bb)] {
            let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(x, y, "{ia}");
        }
    }
}

/// One step of mwtop against one of transformers + peft
/// (scripts/reference_peft.py, tests/fixtures/train): from PEFT's saved
/// initial adapter, the same batch gives the same loss and adapter
/// gradients, and one AdamW step (from the same gradients) the same adapter.
#[test]
fn one_step_equals_transformers_and_peft() {
    use mwtop::checkpoint::adapter::parse_peft_name;
    use mwtop::train::optim::{AdamW, AdamWParams};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train");
    for family in ["llama", "gemma3", "qwen2"] {
        let dir = root.join(family);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let model = load(family, DType::F32);
        let init = AdapterFile::read(&dir.join("init")).unwrap();
        assert_eq!((init.rank, init.alpha), (4, 8.0));
        let lora =
            Arc::new(Lora::from_tensors(&model, init.rank, init.alpha, init.tensors).unwrap());
        let examples: Vec<Example> = reference["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Example {
                ids: e["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
                loss_from: e["loss_from"].as_u64().unwrap() as usize,
            })
            .collect();
        let batch = Batch::new(&examples.iter().collect::<Vec<_>>(), 0);
        let loss = mean_loss(&model, &lora, None, &batch);
        let want = reference["loss"].as_f64().unwrap();
        let got = scalar(&loss);
        assert!(
            (got - want).abs() < 1e-5,
            "{family}: loss {got} vs peft's {want}"
        );
        let store = loss.backward().unwrap();
        let theirs =
            candle_core::safetensors::load(dir.join("grads.safetensors"), &Device::Cpu).unwrap();
        let mut worst = 0f64;
        let mut grads = Vec::new();
        let mut by_name = std::collections::HashMap::new();
        for (name, g) in &theirs {
            by_name.insert(parse_peft_name(name).unwrap(), g.clone());
        }
        for (&id, pair) in lora.pairs() {
            for (var, is_a) in [(&pair.a, true), (&pair.b, false)] {
                let mine = store.get(var.as_tensor()).unwrap();
                let peft = &by_name[&(id, is_a)];
                worst = worst.max(scalar(
                    &(mine - peft).unwrap().abs().unwrap().max_all().unwrap(),
                ));
                // The step from peft's own gradients: AdamW's first step
                // is lr * g / (|g| + eps), which magnifies the last digits
                // of gradients near zero; this checks the optimizer alone.
                grads.push(Some(peft.clone()));
            }
        }
        assert_eq!(grads.len(), theirs.len());
        assert!(worst < 1e-4, "{family}: gradients differ by {worst:e}");
        let mut opt = AdamW::new(lora.vars(), AdamWParams::default()).unwrap();
        opt.step(&grads, reference["lr"].as_f64().unwrap()).unwrap();
        let after = AdapterFile::read(&dir.join("after")).unwrap();
        let mut moved = 0f64;
        for (id, (a, b)) in &after.tensors {
            let pair = lora.get(*id).unwrap();
            for (mine, peft) in [(&pair.a, a), (&pair.b, b)] {
                let d = scalar(
                    &(mine.as_tensor() - peft)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap(),
                );
                moved = moved.max(d);
            }
        }
        assert!(
            moved < 1e-6,
            "{family}: after one step the adapters differ by {moved:e}"
        );
        eprintln!("{family}: loss {got} (peft {want}), gradients within {worst:.1e}, step within {moved:.1e}");
    }
}

fn alpaca_file(dir: &Path) -> PathBuf {
    let path = dir.join("alpaca.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Count to {}.", i % 4 + 2),
                "input": if i % 3 == 0 { "slowly" } else { "" },
                "output": "1 2 3 4 5".chars().take(2 * (i % 4) + 3).collect::<String>(),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `mwtop finetune` on instruction data with MacDrop, then `eval
/// --adapter` on what it wrote: the adapter changes the model.
#[test]
fn the_finetune_command_trains_an_adapter_that_eval_applies() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca_file(dir.path());
    let out = dir.path().join("adapter");
    let model = fixture("llama");
    let m = model.to_str().unwrap();
    let run = common::mwtop(&[
        "finetune",
        m,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--batch",
        "3",
        "--grad-accum",
        "2",
        "--lr",
        "1e-2",
        "--lora-rank",
        "4",
        "--macdrop",
        "--layer",
        "1",
        "--k",
        "2",
        "--json",
    ]);
    let report = json_of(&run);
    assert_eq!(report["updates"], 4);
    assert_eq!(report["examples"], 12);
    assert_eq!(report["finished"], true);
    assert_eq!(report["losses"].as_array().unwrap().len(), 4);
    assert_eq!(report["macdrop"]["layer"], 1);
    assert_eq!(report["macdrop"]["rows"].as_array().unwrap().len(), 2);
    // 3 layers x rank 4 x (in + out) of q, k, v, o, gate, up, down.
    let per_layer = 128 + 96 + 96 + 128 + 3 * 192;
    assert_eq!(report["trainable_parameters"], 3 * 4 * per_layer);
    let file = AdapterFile::read(&out).unwrap();
    assert_eq!(file.rank, 4);
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "abc abc abc 1 2 3 4 5 the end").unwrap();
    let ppl = |extra: &[&str]| {
        let mut args = vec!["eval", m, "--text", text.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        json_of(&common::mwtop(&args))["perplexity"]
            .as_f64()
            .unwrap()
    };
    let base = ppl(&[]);
    let adapted = ppl(&["--adapter", out.to_str().unwrap()]);
    assert!(base.is_finite() && adapted.is_finite());
    assert!((base - adapted).abs() > 1e-3 * base, "{base} vs {adapted}");
}

#[test]
fn finetune_refuses_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca_file(dir.path());
    let model = fixture("llama");
    let m = model.to_str().unwrap();
    let d = data.to_str().unwrap();
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    let t = taken.to_str().unwrap();
    let fresh = dir.path().join("fresh");
    let f = fresh.to_str().unwrap();
    for (args, needles) in [
        (
            vec!["finetune", m, "--data", "no-such-data", "--out", f],
            vec!["no-such-data", "alpaca-en-demo"],
        ),
        (
            vec!["finetune", m, "--data", d, "--out", t, "--steps", "1"],
            vec!["not an adapter directory"],
        ),
        (
            vec!["finetune", m, "--data", d, "--out", f, "--resume"],
            vec!["no saved run"],
        ),
        (
            vec!["finetune", m, "--data", d, "--out", f, "--dtype", "bf16"],
            vec!["f32"],
        ),
        (
            vec![
                "finetune",
                m,
                "--data",
                d,
                "--out",
                f,
                "--targets",
                "q,lm_head",
            ],
            vec!["lm_head"],
        ),
        (
            vec!["finetune", m, "--data", d, "--out", f, "--lr", "0"],
            vec!["--lr"],
        ),
        (
            vec![
                "finetune",
                m,
                "--data",
                d,
                "--out",
                f,
                "--macdrop",
                "--layer",
                "9",
            ],
            vec!["--layer 9"],
        ),
        (
            vec!["eval", m, "--text", d, "--adapter", t],
            vec!["adapter_config.json"],
        ),
        (vec!["finetune", m, "--out", f], vec!["required", "--data"]),
    ] {
        let out = common::mwtop(&args);
        common::assert_one_line_error(&out, &needles);
    }
    assert_eq!(
        std::fs::read_to_string(taken.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(!fresh.exists());
}

/// Ctrl-C (SIGINT) stops a run after the update in progress with a
/// checkpoint, and --resume finishes it.
#[test]
fn an_interrupted_run_leaves_a_checkpoint_that_resumes() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca_file(dir.path());
    let out = dir.path().join("adapter");
    let model = fixture("llama");
    let args = [
        "finetune",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "100000",
        "--batch",
        "2",
        "--grad-accum",
        "1",
        "--save-every",
        "1000000",
        "--json",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_mwtop"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines
        .find_map(|l| l.ok().filter(|l| l.contains("update 2/")))
        .unwrap();
    assert!(first.contains("loss"), "{first}");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let done = child.wait_with_output().unwrap();
    let report = json_of(&done);
    assert_eq!(report["interrupted"], true);
    let step = report["updates"].as_u64().unwrap();
    assert!(step >= 2);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(train::STATE_FILE)).unwrap())
            .unwrap();
    assert_eq!(state["step"].as_u64().unwrap(), step);
    assert_eq!(state["finished"], false);
    AdapterFile::read(&out).unwrap();
    // Resumed with other settings: refused.
    let mut other = args.to_vec();
    other[7] = "3";
    other.push("--resume");
    common::assert_one_line_error(&common::mwtop(&other), &["other settings"]);
}

/// Rows of one batch with different adapters (or none) compute what each
/// computes alone: how the UI shows the base model beside its adapters.
#[test]
fn per_row_adapters_equal_each_adapter_alone() {
    let model = load("qwen2", DType::F32);
    let a = Arc::new(random_lora(&model, 2, 21));
    let b = Arc::new(random_lora(&model, 3, 22));
    let tokens = vec![256u32, 5, 6, 7, 8, 9];
    let attack = Interventions::ffn_mask(1, mwtop::model::intervention::MaskMode::Zero, vec![4, 9]);
    let rows = vec![
        Interventions::none(),
        Interventions::none().with_adapter(Some(a.clone())),
        attack.clone().with_adapter(Some(b.clone())),
    ];
    let batch = model
        .forward(
            &vec![tokens.clone(); 3],
            None,
            &RunOptions {
                interventions: rows,
                ..RunOptions::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    let alone = |lora: Option<Arc<Lora>>, iv: Interventions| {
        model
            .forward(
                std::slice::from_ref(&tokens),
                None,
                &RunOptions {
                    lora,
                    interventions: vec![iv],
                    ..RunOptions::default()
                },
            )
            .unwrap()
            .logits
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    let want = [
        alone(None, Interventions::none()),
        alone(Some(a), Interventions::none()),
        alone(Some(b), attack),
    ];
    for (r, w) in want.iter().enumerate() {
        let got = batch.get(r).unwrap();
        let d = scalar(&(&got - w).unwrap().abs().unwrap().max_all().unwrap());
        assert!(d < 1e-4, "row {r}: {d}");
    }
    let d01 = scalar(
        &(&want[0] - &want[1])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap(),
    );
    assert!(d01 > 1e-2, "the adapter changed nothing");
}
