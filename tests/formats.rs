//! The same synthetic model written as safetensors (f32/f16/bf16) and as GGUF
//! (every supported GGML type) must present identical canonical tensors.

mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use mwtop::checkpoint::{Architecture, Checkpoint, Format};
use mwtop::synthetic::{permute_for_gguf, Spec};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn safetensors_f32_directory_opens_with_exact_values() {
    let dir = common::tempdir();
    let spec = Spec::default();
    spec.write_hf_dir(dir.path(), safetensors::Dtype::F32)
        .unwrap();
    let ckpt = Checkpoint::open_path(dir.path()).unwrap();
    assert_eq!(ckpt.format(), Format::Safetensors);
    let c = ckpt.config();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.n_layers, c.d_model, c.d_ff), (2, 256, 512));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 2, 64));
    assert_eq!(c.vocab_size, 259);
    assert!(c.tied_embeddings);
    assert_eq!(c.bos_token_id, Some(256));
    assert_eq!(c.eos_token_ids, vec![258]);
    // 2 globals + 9 per layer.
    assert_eq!(ckpt.tensors().len(), 2 + 9 * 2);
    let expected_params: usize = spec
        .tensors()
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(ckpt.parameter_count(), expected_params as u64);
    for (name, shape, want) in spec.tensors() {
        let t = ckpt.tensor(&name, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        assert_eq!(values(&t), want, "{name}");
    }
}

#[test]
fn safetensors_half_precision_round_to_nearest() {
    for (dtype, round) in [
        (
            safetensors::Dtype::F16,
            (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        (safetensors::Dtype::BF16, |v: f32| {
            half::bf16::from_f32(v).to_f32()
        }),
    ] {
        let dir = common::tempdir();
        let spec = Spec::default();
        spec.write_hf_dir(dir.path(), dtype).unwrap();
        let ckpt = Checkpoint::open_path(dir.path()).unwrap();
        let (name, _, want) = &spec.tensors()[5];
        let got = values(&ckpt.tensor(name, DType::F32, &Device::Cpu).unwrap());
        let want: Vec<f32> = want.iter().map(|&v| round(v)).collect();
        assert_eq!(got, want, "{dtype:?} {name}");
        assert_eq!(
            ckpt.info(name).unwrap().dtype.to_string(),
            format!("{dtype:?}")
        );
    }
}

#[test]
fn gguf_f32_undoes_the_rope_permutation_of_q_and_k() {
    let dir = common::tempdir();
    let path = dir.path().join("tiny.gguf");
    let spec = Spec::default();
    spec.write_gguf(&path, GgmlDType::F32).unwrap();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    assert_eq!(ckpt.format(), Format::Gguf);
    assert_eq!(ckpt.config(), &spec.config());
    let q = ckpt.info("model.layers.1.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.stored_name, "blk.1.attn_q.weight");
    for (name, _, want) in spec.tensors() {
        let got = values(&ckpt.tensor(&name, DType::F32, &Device::Cpu).unwrap());
        assert_eq!(
            got, want,
            "{name} must equal the Hugging Face tensor exactly"
        );
    }
    // The stored bytes really are permuted: row 1 of the file is HF row 32 (head 0, second half).
    let hf = &spec.tensors()[2];
    assert_eq!(hf.0, "model.layers.0.self_attn.q_proj.weight");
    let permuted = permute_for_gguf(&hf.2, 256, 256, 4);
    assert_eq!(&permuted[256..512], &hf.2[32 * 256..33 * 256]);
}

#[test]
fn gguf_every_block_type_dequantizes_from_the_mapped_bytes() {
    let spec = Spec::default();
    let cfg = spec.config();
    for dtype in [
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let dir = common::tempdir();
        let path = dir.path().join("tiny.gguf");
        spec.write_gguf(&path, dtype).unwrap();
        let ckpt = Checkpoint::open_path(&path).unwrap();
        for (name, shape, hf) in spec.tensors() {
            let got = values(&ckpt.tensor(&name, DType::F32, &Device::Cpu).unwrap());
            if shape.len() == 1 {
                assert_eq!(got, hf, "{name}: 1-D tensors are stored as F32");
                continue;
            }
            // Expected: quantize the stored (permuted) layout, dequantize, un-permute.
            let heads = if name.contains("q_proj") {
                Some(cfg.n_heads)
            } else if name.contains("k_proj") {
                Some(cfg.n_kv_heads)
            } else {
                None
            };
            let stored = match heads {
                Some(h) => permute_for_gguf(&hf, shape[0], shape[1], h),
                None => hf.clone(),
            };
            let t = Tensor::from_vec(stored, shape.as_slice(), &Device::Cpu).unwrap();
            let deq = values(
                &QTensor::quantize(&t, dtype)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap(),
            );
            let want = match heads {
                Some(h) => unpermute(&deq, shape[0], shape[1], h),
                None => deq,
            };
            assert_eq!(got, want, "{dtype:?} {name}");
            // And the dequantized weights are close to the originals.
            let max_err = got
                .iter()
                .zip(&hf)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(max_err < 0.01, "{dtype:?} {name}: max error {max_err}");
        }
    }
}

/// Inverse of `permute_for_gguf`, by search over its own definition.
fn unpermute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let index: Vec<f32> = (0..rows).map(|r| r as f32).collect();
    let moved = permute_for_gguf(&index, rows, 1, heads);
    let mut out = vec![0.0; values.len()];
    for (dst, &src) in moved.iter().enumerate() {
        let src = src as usize;
        out[src * cols..(src + 1) * cols].copy_from_slice(&values[dst * cols..(dst + 1) * cols]);
    }
    out
}

#[test]
fn gguf_vocabulary_is_a_working_tokenizer() {
    let dir = common::tempdir();
    let path = dir.path().join("tiny.gguf");
    Spec::default().write_gguf(&path, GgmlDType::F32).unwrap();
    let ckpt = Checkpoint::open_path(&path).unwrap();
    let tok = ckpt.tokenizer().unwrap();
    // No merges: one token per byte; the special token is matched whole.
    let enc = tok.encode("<|im_start|>Hi 42", false).unwrap();
    let mut want = vec![257u32];
    want.extend("Hi 42".bytes().map(u32::from));
    assert_eq!(enc.get_ids(), want.as_slice());
    assert_eq!(tok.decode(&want[1..], false).unwrap(), "Hi 42");
    // The byte-level alphabet covers non-ASCII text.
    let text = "naïve — 東京";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), text.len());
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}

#[test]
fn safetensors_and_gguf_of_one_model_agree() {
    let dir = common::tempdir();
    let spec = Spec::default();
    let hf_dir = dir.path().join("hf");
    spec.write_hf_dir(&hf_dir, safetensors::Dtype::F32).unwrap();
    let gguf = dir.path().join("m.gguf");
    spec.write_gguf(&gguf, GgmlDType::F32).unwrap();
    let a = Checkpoint::open_path(&hf_dir).unwrap();
    let b = Checkpoint::open_path(&gguf).unwrap();
    assert_eq!(a.config(), b.config());
    let mut names_a: Vec<_> = a.tensors().iter().map(|t| t.name.clone()).collect();
    let mut names_b: Vec<_> = b.tensors().iter().map(|t| t.name.clone()).collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    for n in &names_a {
        let x = values(&a.tensor(n, DType::F32, &Device::Cpu).unwrap());
        let y = values(&b.tensor(n, DType::F32, &Device::Cpu).unwrap());
        assert_eq!(x, y, "{n}");
    }
    // Both tokenizers agree too (tokenizer.json was written from the same vocabulary).
    let text = "The year 2024, naïve café!";
    let ta = a
        .tokenizer()
        .unwrap()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let tb = b
        .tokenizer()
        .unwrap()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ta, tb);
}

#[test]
fn sharded_directory_opens_every_shard() {
    let dir = common::tempdir();
    let spec = Spec::default();
    spec.write_hf_dir_sharded(dir.path(), safetensors::Dtype::BF16, 3)
        .unwrap();
    assert!(dir.path().join("model-00003-of-00003.safetensors").exists());
    let ckpt = Checkpoint::open_path(dir.path()).unwrap();
    assert_eq!(ckpt.tensors().len(), 20);
    let files: std::collections::BTreeSet<_> =
        ckpt.tensors().iter().map(|t| t.file.clone()).collect();
    assert_eq!(files.len(), 3);
    for (name, _, want) in spec.tensors() {
        let got = values(&ckpt.tensor(&name, DType::F32, &Device::Cpu).unwrap());
        let want: Vec<f32> = want
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(got, want, "{name}");
    }
}
