//! Cost of each capture reduction on a 413-token forward (for tuning).
use candle_core::{DType, Device};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::{LogitsMode, Model, RunOptions};
use std::time::Instant;
fn main() {
    mwtop::pin_thread_count();
    let ckpt = Checkpoint::open_path(&mwtop::demo::ensure().unwrap()).unwrap();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let ids: Vec<u32> = (0..413).map(|i| (i * 97 % 40000) as u32 + 100).collect();
    let cases: Vec<(&str, Vec<CaptureRequest>)> = vec![
        ("none", vec![]),
        (
            "topk16",
            vec![CaptureRequest::every_layer(
                HookPoint::ResidPost,
                Reduction::TopK(16),
            )],
        ),
        (
            "median_layer",
            vec![CaptureRequest::every_layer(
                HookPoint::ResidPost,
                Reduction::MedianAbs,
            )],
        ),
        (
            "median_token",
            vec![CaptureRequest::every_layer(
                HookPoint::ResidPost,
                Reduction::MedianAbsPerToken,
            )],
        ),
        (
            "maxabs",
            vec![CaptureRequest::every_layer(
                HookPoint::ResidPost,
                Reduction::MaxAbsPerDim,
            )],
        ),
        (
            "mlp_pos0",
            vec![CaptureRequest::every_layer(
                HookPoint::MlpPost,
                Reduction::Position(0),
            )],
        ),
    ];
    for round in 0..2 {
        for (name, cap) in &cases {
            let opts = RunOptions {
                capture: cap.clone(),
                logits: LogitsMode::None,
                ..Default::default()
            };
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                model
                    .forward(std::slice::from_ref(&ids), None, &opts)
                    .unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            if round == 1 {
                println!("{name:14} {:.1} ms", best * 1e3);
            }
        }
    }
}
