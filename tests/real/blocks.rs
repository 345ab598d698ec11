//! The demo models held as their GGUF blocks (`--weights stored`): SmolLM2
//! (Q4_1 projections, a Q8_0 embedding that is also the head) and Gemma 3
//! (Q4_K_M: Q5_0, Q8_0, Q4_K and Q6_K matrices, q/k and v of one layer in
//! different formats) take the file's bytes, not a dense f32 copy, and
//! compute the same logits, to the bit, as the weights converted at load.

use candle_core::{DType, Device};
use mwtop::model::{Model, RunOptions, WeightPrecision};

fn same_as_converted(demo: &crate::Demo, max_ratio: f64) {
    let stored = Model::load_as(
        &demo.ckpt,
        &Device::Cpu,
        DType::F32,
        WeightPrecision::Stored,
        |_, _| {},
    )
    .unwrap();
    let ratio = stored.weight_bytes() as f64 / demo.model.weight_bytes() as f64;
    assert!(ratio < max_ratio, "{ratio:.3} of the f32 copy's bytes");
    let ids = demo
        .tok
        .encode(
            "The capital of France is Paris, and the capital of Italy is",
            false,
        )
        .unwrap()
        .get_ids()
        .to_vec();
    let run = |m: &Model| {
        m.forward(std::slice::from_ref(&ids), None, &RunOptions::default())
            .unwrap()
            .logits
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (run(&demo.model), run(&stored));
    assert_eq!(a.len(), b.len());
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of {} logits differ", a.len());
}

#[test]
fn smollm2_as_blocks_takes_a_fifth_of_the_bytes_and_computes_the_same_logits() {
    same_as_converted(crate::demo(), 0.2);
}

#[test]
fn gemma3_as_blocks_with_mixed_formats_computes_the_same_logits() {
    same_as_converted(crate::gemma3(), 0.35);
}
