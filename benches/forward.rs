//! Prompt and decode speed of mwtop's forward pass on the demo model (f32, CPU),
//! capture off and on. `scripts/bench_vs_llamacpp.py` runs this and llama.cpp
//! (dense F32, same threads) in one go and prints both.
//!
//! Run: cargo bench --bench forward [-- --json]

use std::time::Instant;

use candle_core::{DType, Device, IndexOp};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::{LogitsMode, Model, RunOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The captures the TUI asks for on every run.
fn ui_captures() -> Vec<CaptureRequest> {
    vec![
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MaxAbsPerDim),
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MedianAbsPerToken),
        CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
    ]
}

fn main() {
    mwtop::pin_thread_count();
    let json = std::env::args().any(|a| a == "--json");
    let path = mwtop::demo::ensure().expect("demo model");
    let ckpt = Checkpoint::open_path(&path).unwrap();
    let t = Instant::now();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let tok = ckpt.tokenizer().unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/eval.txt")).unwrap();
    let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    let n = ids.len();
    let decode_n = 64;
    let mut results = serde_json::Map::new();
    for (label, capture) in [("capture_off", Vec::new()), ("capture_on", ui_captures())] {
        let prompt_opts = RunOptions {
            capture: capture.clone(),
            logits: LogitsMode::Last,
            ..Default::default()
        };
        let mut prompt_times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            model
                .forward(std::slice::from_ref(&ids), None, &prompt_opts)
                .unwrap();
            prompt_times.push(t.elapsed().as_secs_f64());
        }
        // Decode: 20 prompt tokens, then greedy steps with the KV cache.
        let mut cache = model.new_cache();
        let out = model
            .forward(&[ids[..20].to_vec()], Some(&mut cache), &prompt_opts)
            .unwrap();
        let mut next = out
            .logits
            .unwrap()
            .i((0, 0))
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        let t = Instant::now();
        for _ in 0..decode_n {
            let out = model
                .forward(&[vec![next]], Some(&mut cache), &prompt_opts)
                .unwrap();
            next = out
                .logits
                .unwrap()
                .i((0, 0))
                .unwrap()
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
        }
        let decode_s = t.elapsed().as_secs_f64();
        let prompt_tps = n as f64 / median(prompt_times);
        let decode_tps = decode_n as f64 / decode_s;
        results.insert(
            label.into(),
            serde_json::json!({"prompt_tokens": n, "prompt_tok_s": prompt_tps, "decode_tokens": decode_n, "decode_tok_s": decode_tps}),
        );
        if !json {
            println!("mwtop f32 CPU, {label:11}: prompt {prompt_tps:7.1} tok/s ({n} tokens), decode {decode_tps:6.1} tok/s ({decode_n} tokens)");
        }
    }
    let off = results["capture_off"]["prompt_tok_s"].as_f64().unwrap();
    let on = results["capture_on"]["prompt_tok_s"].as_f64().unwrap();
    results.insert("load_s".into(), load_s.into());
    results.insert("capture_overhead_prompt".into(), (off / on - 1.0).into());
    if json {
        println!("{}", serde_json::Value::Object(results));
    } else {
        println!(
            "load {load_s:.2}s; capture overhead on the prompt: {:+.1}%",
            (off / on - 1.0) * 100.0
        );
    }
}
