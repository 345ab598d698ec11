//! Seconds for `scan` and the full attack `--sweep` on the demo model (f32,
//! CPU), and the capture overhead of a scan's captures over a plain forward.
//!
//! Run: cargo bench --bench analysis

use std::time::Instant;

use candle_core::{DType, Device};
use mwtop::analysis::massive::{self, Thresholds};
use mwtop::analysis::perplexity::Window;
use mwtop::analysis::sweep::{run_attacks, sweep_attacks};
use mwtop::analysis::target::{resolve_target, DEFAULT_PROBE};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::{LogitsMode, Model, RunOptions};

fn main() {
    mwtop::pin_thread_count();
    let ckpt = Checkpoint::open_path(&mwtop::demo::ensure().unwrap()).unwrap();
    let t = Instant::now();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let load = t.elapsed().as_secs_f64();
    let tok = ckpt.tokenizer().unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/eval.txt")).unwrap();
    let mut ids = vec![model.config().bos_token_id.unwrap()];
    ids.extend(tok.encode(text.as_str(), false).unwrap().get_ids());

    // Capture overhead: the scan's captures on the 413-token text, alternating runs.
    let captures = vec![
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::TopK(16)),
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MedianAbs),
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MedianAbsPerToken),
        CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MaxAbsPerDim),
    ];
    let (mut plain, mut captured) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        for (opts, out) in [
            (
                RunOptions {
                    logits: LogitsMode::None,
                    ..Default::default()
                },
                &mut plain,
            ),
            (
                RunOptions {
                    capture: captures.clone(),
                    logits: LogitsMode::None,
                    ..Default::default()
                },
                &mut captured,
            ),
        ] {
            let t = Instant::now();
            model
                .forward(std::slice::from_ref(&ids), None, &opts)
                .unwrap();
            out.push(t.elapsed().as_secs_f64());
        }
    }
    // The fastest run of each: the least disturbed by whatever else the machine does.
    let best = |v: Vec<f64>| v.into_iter().fold(f64::MAX, f64::min);
    let (p, c) = (best(plain), best(captured));

    let probe_ids = tok.encode(DEFAULT_PROBE, false).unwrap().get_ids().to_vec();
    let (probe, pos0) = massive::probe_tokens(&model, &probe_ids);
    let t = Instant::now();
    let report = massive::scan(&model, &tok, &probe, pos0, 8, Thresholds::default()).unwrap();
    let scan_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let target = resolve_target(
        &model,
        &tok,
        DEFAULT_PROBE,
        Thresholds::default(),
        None,
        None,
    )
    .unwrap();
    let attacks = sweep_attacks(&target, model.config().d_ff, 0);
    run_attacks(
        &model,
        &ids,
        &attacks,
        Window::default_for(&model),
        |_, _| {},
    )
    .unwrap();
    let sweep_s = t.elapsed().as_secs_f64();

    println!(
        "demo model f32 on {} CPU threads (load {load:.2}s)",
        candle_core::utils::get_num_threads()
    );
    println!("  forward of {} tokens: plain {:.3}s, with the scan's captures {:.3}s (fastest of 9 each): overhead {:+.1}%", ids.len(), p, c, (c / p - 1.0) * 100.0);
    println!(
        "  scan of the default probe ({} tokens): {scan_s:.3}s (massive layer {:?})",
        probe.len(),
        report.massive_layer
    );
    println!(
        "  sweep: {} perplexity runs of {} tokens: {sweep_s:.1}s",
        attacks.len(),
        ids.len()
    );
}
