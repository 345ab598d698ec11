//! Matrices held as the checkpoint stores them (`--weights stored`): a
//! bf16/f16 checkpoint keeps half the bytes of its f32 copy, and every
//! result equals the f32 copy's, because each product reads the stored
//! values converted exactly.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use mwtop::checkpoint::{Checkpoint, WeightId};
use mwtop::model::intervention::{Interventions, MaskMode, WeightEdit};
use mwtop::model::{Model, RunOptions, WeightPrecision};
use mwtop::synthetic::Spec;

use common::max_diff;

const TOKENS: [u32; 12] = [256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100];

fn checkpoint(dtype: safetensors::Dtype) -> (tempfile::TempDir, Checkpoint) {
    let dir = common::tempdir();
    Spec::planted().write_hf_dir(dir.path(), dtype).unwrap();
    let ckpt = Checkpoint::open_path(dir.path()).unwrap();
    (dir, ckpt)
}

fn load(ckpt: &Checkpoint, precision: WeightPrecision) -> Model {
    Model::load_as(ckpt, &Device::Cpu, DType::F32, precision, |_, _| {}).unwrap()
}

fn logits(model: &Model, options: &RunOptions) -> Tensor {
    model
        .forward(&[TOKENS.to_vec()], None, options)
        .unwrap()
        .logits
        .unwrap()
}

/// A d_ff mask at layer 1 (dims 0, 17, 300) and a one-run edit of
/// down_proj[5, 100] of layer 0.
fn attack_with_edit(mode: MaskMode) -> RunOptions {
    RunOptions {
        interventions: vec![Interventions {
            weight_edits: vec![WeightEdit {
                tensor: WeightId::layer(0, mwtop::checkpoint::Proj::Down),
                row: 5,
                col: 100,
                value: 7.5,
            }],
            ..Interventions::ffn_mask(1, mode, vec![0, 17, 300])
        }],
        ..Default::default()
    }
}

#[test]
fn stored_bf16_and_f16_take_half_the_bytes_and_compute_the_same_logits() {
    for dtype in [safetensors::Dtype::BF16, safetensors::Dtype::F16] {
        let (_d, ckpt) = checkpoint(dtype);
        let dense = load(&ckpt, WeightPrecision::Compute);
        let stored = load(&ckpt, WeightPrecision::Stored);
        assert_eq!(stored.weight_precision(), WeightPrecision::Stored);
        // Every matrix at 2 bytes instead of 4; the norms stay f32.
        let (d, s) = (dense.weight_bytes() as f64, stored.weight_bytes() as f64);
        assert!(s / d < 0.51 && s / d > 0.49, "{dtype:?}: {s} / {d} bytes");
        let plain = RunOptions::default();
        let diff = max_diff(&logits(&dense, &plain), &logits(&stored, &plain));
        assert!(diff < 1e-5, "{dtype:?}: logits differ by {diff}");
        // The matrices as the analysis reads them: the same f32 values.
        let up = WeightId::layer(1, mwtop::checkpoint::Proj::Up);
        let (a, b) = (dense.weight(up).unwrap(), stored.weight(up).unwrap());
        assert_eq!(b.dtype(), DType::F32);
        assert_eq!(max_diff(&a, &b), 0.0);
    }
}

#[test]
fn stored_decoding_with_the_cache_equals_the_f32_copy() {
    for dtype in [safetensors::Dtype::BF16, safetensors::Dtype::F16] {
        decode_both(dtype);
    }
}

fn decode_both(dtype: safetensors::Dtype) {
    let (_d, ckpt) = checkpoint(dtype);
    let dense = load(&ckpt, WeightPrecision::Compute);
    let stored = load(&ckpt, WeightPrecision::Stored);
    let plain = RunOptions::default();
    let (mut c1, mut c2) = (dense.new_cache(), stored.new_cache());
    for (i, &t) in TOKENS.iter().enumerate() {
        let step = |m: &Model, c: &mut mwtop::model::Cache| {
            m.forward(&[vec![t]], Some(c), &plain)
                .unwrap()
                .logits
                .unwrap()
        };
        let (a, b) = (step(&dense, &mut c1), step(&stored, &mut c2));
        // One-token products: the CPU's GEMV widens each stored weight
        // exactly and sums in the f32 copy's order, so the logits are the
        // same to the bit (the prompt-sized products agree to 1e-5 above).
        let diff = max_diff(&a, &b);
        assert_eq!(diff, 0.0, "token {i}");
    }
}

#[test]
fn a_stored_pair_decodes_with_one_read_of_each_matrix_like_the_f32_copy() {
    // Two sequences a step at a time (the A/B pair's shape): two-row
    // products take the stored GEMV, never a converted copy of W.
    let (_d, ckpt) = checkpoint(safetensors::Dtype::BF16);
    let dense = load(&ckpt, WeightPrecision::Compute);
    let stored = load(&ckpt, WeightPrecision::Stored);
    let plain = RunOptions::default();
    let (mut c1, mut c2) = (dense.new_cache(), stored.new_cache());
    for (i, pair) in TOKENS.chunks(2).enumerate() {
        let batch = [vec![pair[0]], vec![pair[1]]];
        let step = |m: &Model, c: &mut mwtop::model::Cache| {
            m.forward(&batch, Some(c), &plain).unwrap().logits.unwrap()
        };
        let (a, b) = (step(&dense, &mut c1), step(&stored, &mut c2));
        assert_eq!(b.dims()[0], 2);
        let diff = max_diff(&a, &b);
        assert!(diff < 1e-5, "step {i}: the pair's logits differ by {diff}");
    }
}

#[test]
fn attacks_and_edits_on_stored_matrices_equal_those_on_the_f32_copy() {
    let (_d, ckpt) = checkpoint(safetensors::Dtype::BF16);
    let mut dense = load(&ckpt, WeightPrecision::Compute);
    let mut stored = load(&ckpt, WeightPrecision::Stored);
    // The d_ff mask (the UI's attack) and a one-run weight edit.
    let attack = attack_with_edit(MaskMode::Zero);
    let diff = max_diff(&logits(&dense, &attack), &logits(&stored, &attack));
    assert!(diff < 1e-5, "attacked logits differ by {diff}");
    // Edits for good: zeroed rows keep the stored dtype; an entry that bf16
    // cannot hold turns its stack into f32, so the value is kept exactly.
    for m in [&mut dense, &mut stored] {
        m.physically_zero_ffn_rows(1, &[3, 4]).unwrap();
        m.set_weight_entry(
            WeightId::layer(1, mwtop::checkpoint::Proj::Q),
            2,
            3,
            1.0 + 1e-6,
        )
        .unwrap();
    }
    let plain = RunOptions::default();
    let diff = max_diff(&logits(&dense, &plain), &logits(&stored, &plain));
    assert!(diff < 1e-5, "edited logits differ by {diff}");
    let q = WeightId::layer(1, mwtop::checkpoint::Proj::Q);
    let held = stored.weight(q).unwrap().flatten_all().unwrap();
    let cols = stored.weight(q).unwrap().dim(1).unwrap();
    let v: f32 = held.get(2 * cols + 3).unwrap().to_scalar().unwrap();
    assert_eq!(v, 1.0 + 1e-6);
    assert!(stored.weight_bytes() > load(&ckpt, WeightPrecision::Stored).weight_bytes());
}

#[test]
fn the_cli_takes_weights_stored_and_f32_and_refuses_others() {
    let dir = common::tempdir();
    Spec::planted()
        .write_hf_dir(dir.path(), safetensors::Dtype::BF16)
        .unwrap();
    let model = common::path_str(dir.path());
    let run = |weights: &str| {
        let out = common::mwtop(&[
            "generate",
            model,
            "--prompt",
            "hello",
            "--max-tokens",
            "6",
            "--device",
            "cpu",
            "--weights",
            weights,
            "--json",
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
        v["tokens"].clone()
    };
    let (stored, dense) = (run("stored"), run("f32"));
    assert!(stored.as_array().is_some_and(|t| !t.is_empty()));
    assert_eq!(stored, dense);
    let out = common::mwtop(&["generate", model, "--weights", "int3", "--device", "cpu"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("int3"));
}

#[test]
fn an_f32_checkpoint_run_in_bf16_is_converted_once_not_held_wider() {
    let (_d, ckpt) = checkpoint(safetensors::Dtype::F32);
    let as_bf16 =
        |precision| Model::load_as(&ckpt, &Device::Cpu, DType::BF16, precision, |_, _| {}).unwrap();
    let (stored, dense) = (
        as_bf16(WeightPrecision::Stored),
        as_bf16(WeightPrecision::Compute),
    );
    assert_eq!(stored.weight_bytes(), dense.weight_bytes());
    let plain = RunOptions::default();
    assert_eq!(
        max_diff(&logits(&stored, &plain), &logits(&dense, &plain)),
        0.0
    );
}

#[test]
fn a_bf16_checkpoint_run_in_f16_is_converted_at_load_where_overflow_is_refused() {
    // bf16 reaches 3e38, f16 65504: held as bf16 and converted per product,
    // an entry of 1.7e38 would become inf without a word; converted at
    // load, the finite check refuses it, as it does for the dense copy.
    let dir = common::tempdir();
    Spec::planted()
        .write_hf_dir(dir.path(), safetensors::Dtype::BF16)
        .unwrap();
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let at = header["model.layers.1.mlp.up_proj.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let first = 8 + header_len + at;
    bytes[first..first + 2].copy_from_slice(&0x7f00u16.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let ckpt = Checkpoint::open_path(dir.path()).unwrap();
    for precision in [WeightPrecision::Stored, WeightPrecision::Compute] {
        let err = Model::load_as(&ckpt, &Device::Cpu, DType::F16, precision, |_, _| {})
            .err()
            .unwrap_or_else(|| panic!("{precision:?}: an f16 overflow was loaded"));
        assert!(err.to_string().contains("overflow"), "{precision:?}: {err}");
    }
    // In f32 the stored matrices hold it exactly.
    assert!(Model::load_as(
        &ckpt,
        &Device::Cpu,
        DType::F32,
        WeightPrecision::Stored,
        |_, _| {}
    )
    .is_ok());
}

/// Every block format mwtop keeps as blocks, with its bytes per weight.
const BLOCK_FORMATS: [(GgmlDType, f64); 8] = [
    (GgmlDType::Q4_0, 18.0 / 32.0),
    (GgmlDType::Q4_1, 20.0 / 32.0),
    (GgmlDType::Q5_0, 22.0 / 32.0),
    (GgmlDType::Q5_1, 24.0 / 32.0),
    (GgmlDType::Q8_0, 34.0 / 32.0),
    (GgmlDType::Q4K, 144.0 / 256.0),
    (GgmlDType::Q5K, 176.0 / 256.0),
    (GgmlDType::Q6K, 210.0 / 256.0),
];

fn gguf(format: GgmlDType) -> (tempfile::TempDir, Checkpoint) {
    let dir = common::tempdir();
    let path = dir.path().join("tiny.gguf");
    Spec::default().write_gguf(&path, format).unwrap();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    (dir, ckpt)
}

#[test]
fn gguf_blocks_stay_blocks_and_compute_what_the_converted_weights_compute() {
    for (format, per_weight) in BLOCK_FORMATS {
        let (_d, ckpt) = gguf(format);
        let dense = load(&ckpt, WeightPrecision::Compute);
        let stored = load(&ckpt, WeightPrecision::Stored);
        // The matrices at the file's bytes per weight (the norms stay f32,
        // a few KB): a quarter to a third of the f32 copy's.
        let (d, s) = (dense.weight_bytes() as f64, stored.weight_bytes() as f64);
        let norms = d - ckpt.parameter_count() as f64 * 4.0;
        assert!(
            norms.abs() < 1.0,
            "{format:?}: the f32 copy is 4 bytes a weight"
        );
        let matrices = (s / d) * 4.0;
        assert!(
            (matrices - per_weight).abs() < 0.02,
            "{format:?}: {matrices} bytes a weight held, the file has {per_weight}"
        );
        // A prompt's products dequantize each matrix exactly as the load's
        // conversion does, then multiply as the f32 copy does: the same bits.
        let plain = RunOptions::default();
        let (a, b) = (logits(&dense, &plain), logits(&stored, &plain));
        assert_eq!(max_diff(&a, &b), 0.0, "{format:?}: prompt logits");
        // Computed in f16, blocks are converted at load (where an overflow
        // is refused), never dequantized to f16 per product.
        let f16 = |p| Model::load_as(&ckpt, &Device::Cpu, DType::F16, p, |_, _| {}).unwrap();
        assert_eq!(
            f16(WeightPrecision::Stored).weight_bytes(),
            f16(WeightPrecision::Compute).weight_bytes(),
            "{format:?}: f16"
        );
        // q rows come back in Hugging Face order, GGUF's RoPE permutation
        // undone on the blocks' rows.
        for proj in [mwtop::checkpoint::Proj::Q, mwtop::checkpoint::Proj::Up] {
            let id = WeightId::layer(1, proj);
            let (a, b) = (dense.weight(id).unwrap(), stored.weight(id).unwrap());
            assert_eq!(max_diff(&a, &b), 0.0, "{format:?}: {id}");
        }
        // One-token steps and the A/B pair's two-row steps: the CPU's GEMV
        // dequantizes each row of blocks with candle's code and sums it in
        // the f32 copy's order, so decoding is equal to the bit.
        let (mut c1, mut c2) = (dense.new_cache(), stored.new_cache());
        for &t in &TOKENS[..4] {
            let step = |m: &Model, c: &mut mwtop::model::Cache| {
                m.forward(&[vec![t], vec![t + 1]], Some(c), &plain)
                    .unwrap()
                    .logits
                    .unwrap()
            };
            let diff = max_diff(&step(&dense, &mut c1), &step(&stored, &mut c2));
            assert_eq!(diff, 0.0, "{format:?}: decoded logits differ by {diff}");
        }
    }
}

#[test]
fn attacks_and_edits_on_gguf_blocks_equal_those_on_the_converted_weights() {
    let (_d, ckpt) = gguf(GgmlDType::Q4_1);
    let mut dense = load(&ckpt, WeightPrecision::Compute);
    let mut stored = load(&ckpt, WeightPrecision::Stored);
    let attack = attack_with_edit(MaskMode::Keep);
    let diff = max_diff(&logits(&dense, &attack), &logits(&stored, &attack));
    assert_eq!(diff, 0.0, "attacked logits differ by {diff}");
    // Edits for good turn the edited stacks dense (no block holds 1 + 1e-6).
    let before = stored.weight_bytes();
    for m in [&mut dense, &mut stored] {
        m.physically_zero_ffn_rows(1, &[3, 4]).unwrap();
        m.set_weight_entry(
            WeightId::layer(0, mwtop::checkpoint::Proj::K),
            2,
            3,
            1.0 + 1e-6,
        )
        .unwrap();
    }
    let plain = RunOptions::default();
    let diff = max_diff(&logits(&dense, &plain), &logits(&stored, &plain));
    assert_eq!(diff, 0.0, "edited logits differ by {diff}");
    let k = stored
        .weight(WeightId::layer(0, mwtop::checkpoint::Proj::K))
        .unwrap();
    let v: f32 = k.get(2).unwrap().get(3).unwrap().to_scalar().unwrap();
    assert_eq!(v, 1.0 + 1e-6);
    assert!(stored.weight_bytes() > before);
}
