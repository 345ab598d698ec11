//! Decode loop for profiling (perf record): 200 greedy steps on the demo model.
use candle_core::{DType, Device, IndexOp};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::{LogitsMode, Model, RunOptions};
fn main() {
    mwtop::pin_thread_count();
    let ckpt = Checkpoint::open_path(&mwtop::demo::ensure().unwrap()).unwrap();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    let opts = RunOptions {
        logits: LogitsMode::Last,
        ..Default::default()
    };
    let mut cache = model.new_cache();
    let mut next = 1u32;
    let t = std::time::Instant::now();
    for _ in 0..200 {
        let out = model
            .forward(&[vec![next]], Some(&mut cache), &opts)
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
    eprintln!("{:.1} tok/s", 200.0 / t.elapsed().as_secs_f64());
}
