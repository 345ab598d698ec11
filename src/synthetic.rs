//! Small synthetic checkpoints written by tests and benchmarks.
//!
//! Values are deterministic (a seeded xorshift), so a test knows every weight
//! exactly. The same model can be written as a Hugging Face directory or as a
//! GGUF file (with llama.cpp's q/k row permutation applied, as its converter
//! does), which lets tests check that both formats present identical tensors.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::checkpoint::gguf::GgufValue;
use crate::checkpoint::gguf_writer::{self, GgufTensorData};
use crate::checkpoint::names;
use crate::checkpoint::{Architecture, ModelConfig};

/// The shape of a synthetic Llama-style model.
#[derive(Debug, Clone)]
pub struct Spec {
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Byte-level tokens (256) plus special tokens.
    pub vocab_size: usize,
    pub tied_embeddings: bool,
    pub seed: u64,
    /// A massive weight planted on purpose (see [`Plant`]).
    pub plant: Option<Plant>,
}

/// A planted massive weight: at `layer`, rows `ffn_dims` of W_up and W_gate
/// point along the BOS token's embedding, so the d_ff state at the BOS
/// position is huge exactly at those dims (the first largest); down_proj
/// column `ffn_dims[0]` is zero except for `super_value` at row `hidden_dim`
/// (the super weight), which writes a massive activation into `hidden_dim`
/// of the residual stream at position 0 from `layer` on.
#[derive(Debug, Clone)]
pub struct Plant {
    pub layer: usize,
    pub ffn_dims: Vec<usize>,
    pub hidden_dim: usize,
    pub super_value: f32,
}

impl Default for Spec {
    /// Dimensions are multiples of 256 so every GGML block type (K-quants too) fits.
    fn default() -> Self {
        Self {
            n_layers: 2,
            d_model: 256,
            d_ff: 512,
            n_heads: 4,
            n_kv_heads: 2,
            vocab_size: 256 + SPECIAL_TOKENS.len(),
            tied_embeddings: true,
            seed: 7,
            plant: None,
        }
    }
}

/// Special tokens after the 256 byte tokens; ids 256, 257, 258.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

impl Spec {
    /// A 3-layer tiny model with a massive weight planted at layer 1:
    /// d_ff dims 300 then 17, hidden dim 42, super weight 1.5.
    pub fn planted() -> Self {
        Self {
            n_layers: 3,
            // Untied, so the large BOS embedding row does not dominate the output head.
            tied_embeddings: false,
            plant: Some(Plant {
                layer: 1,
                ffn_dims: vec![300, 17],
                hidden_dim: 42,
                super_value: 1.5,
            }),
            ..Self::default()
        }
    }

    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            n_layers: self.n_layers,
            d_model: self.d_model,
            d_ff: self.d_ff,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.d_model / self.n_heads,
            rope_theta: 10_000.0,
            rope_scaling: None,
            norm_eps: 1e-5,
            vocab_size: self.vocab_size,
            tied_embeddings: self.tied_embeddings,
            bos_token_id: Some(256),
            eos_token_ids: vec![258],
            max_position_embeddings: 512,
            hidden_act: "silu".into(),
            attention: Default::default(),
        }
    }

    /// Every tensor in Hugging Face layout: (canonical name, shape, values).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = self.random_tensors();
        if let Some(p) = &self.plant {
            self.apply_plant(p, &mut out);
        }
        out
    }

    fn apply_plant(&self, p: &Plant, tensors: &mut [(String, Vec<usize>, Vec<f32>)]) {
        let d = self.d_model;
        // A fixed sign pattern: the BOS embedding, and the direction the planted rows read.
        let signs: Vec<f32> = (0..d)
            .map(|i| if (i * 7 + 3) % 5 < 2 { -1.0 } else { 1.0 })
            .collect();
        let bos = 256;
        let find = |tensors: &mut [(String, Vec<usize>, Vec<f32>)], name: &str| {
            tensors
                .iter()
                .position(|(n, _, _)| n == name)
                .expect("tensor exists")
        };
        let e = find(tensors, "model.embed_tokens.weight");
        for (i, s) in signs.iter().enumerate() {
            tensors[e].2[bos * d + i] = 0.5 * s;
        }
        let l = p.layer;
        for (rank, &dim) in p.ffn_dims.iter().enumerate() {
            // The first dim is the strongest: 3.0, then 2.0, ...
            let strength = 3.0 - rank as f32;
            for name in ["gate_proj", "up_proj"] {
                let t = find(tensors, &format!("model.layers.{l}.mlp.{name}.weight"));
                for (i, s) in signs.iter().enumerate() {
                    tensors[t].2[dim * d + i] = strength * s / (d as f32).sqrt();
                }
            }
            let down = find(tensors, &format!("model.layers.{l}.mlp.down_proj.weight"));
            for row in 0..d {
                tensors[down].2[row * self.d_ff + dim] = 0.0;
            }
            if rank == 0 {
                tensors[down].2[p.hidden_dim * self.d_ff + dim] = p.super_value;
            }
        }
    }

    fn random_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = XorShift(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        self.config()
            .expected_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if name.ends_with("norm.weight") {
                    (0..n).map(|_| 1.0 + 0.1 * rng.next_signed()).collect()
                } else {
                    (0..n).map(|_| 0.05 * rng.next_signed()).collect()
                };
                (name, shape, values)
            })
            .collect()
    }

    /// GGUF metadata for this model, including a byte-level BPE vocabulary.
    pub fn gguf_metadata(&self) -> Vec<(String, GgufValue)> {
        let c = self.config();
        let s = |v: &str| GgufValue::String(v.to_string());
        let u = |v: usize| GgufValue::U32(v as u32);
        let mut tokens: Vec<GgufValue> = byte_level_alphabet()
            .into_iter()
            .map(GgufValue::String)
            .collect();
        let mut types = vec![GgufValue::I32(1); tokens.len()];
        for t in SPECIAL_TOKENS {
            tokens.push(s(t));
            types.push(GgufValue::I32(3));
        }
        while tokens.len() < self.vocab_size {
            tokens.push(s(&format!("<|unused{}|>", tokens.len())));
            types.push(GgufValue::I32(4));
        }
        vec![
            ("general.architecture".into(), s("llama")),
            ("general.name".into(), s("mwtop synthetic")),
            ("llama.block_count".into(), u(c.n_layers)),
            ("llama.context_length".into(), u(c.max_position_embeddings)),
            ("llama.embedding_length".into(), u(c.d_model)),
            ("llama.feed_forward_length".into(), u(c.d_ff)),
            ("llama.attention.head_count".into(), u(c.n_heads)),
            ("llama.attention.head_count_kv".into(), u(c.n_kv_heads)),
            (
                "llama.rope.freq_base".into(),
                GgufValue::F32(c.rope_theta as f32),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                GgufValue::F32(c.norm_eps as f32),
            ),
            ("llama.vocab_size".into(), u(c.vocab_size)),
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("smollm")),
            ("tokenizer.ggml.tokens".into(), GgufValue::Array(8, tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::Array(5, types),
            ),
            (
                "tokenizer.ggml.merges".into(),
                GgufValue::Array(8, Vec::new()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(256)),
            ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(258)),
            (
                "tokenizer.ggml.add_bos_token".into(),
                GgufValue::Bool(false),
            ),
        ]
    }

    /// Writes a GGUF file; matrices are stored as `dtype`, 1-D tensors as F32
    /// (as llama.cpp does), and q/k rows permuted as llama.cpp's converter does.
    pub fn write_gguf(&self, path: &Path, dtype: GgmlDType) -> candle_core::Result<()> {
        self.write_gguf_with(path, dtype, |_| {})
    }

    /// [`Self::write_gguf`] with the metadata edited first (for tests of
    /// what a reader must refuse).
    pub fn write_gguf_with(
        &self,
        path: &Path,
        dtype: GgmlDType,
        edit: impl FnOnce(&mut Vec<(String, GgufValue)>),
    ) -> candle_core::Result<()> {
        let c = self.config();
        let mut out = Vec::new();
        for (name, shape, mut values) in self.tensors() {
            if name.ends_with("q_proj.weight") {
                values = permute_for_gguf(&values, shape[0], shape[1], c.n_heads);
            } else if name.ends_with("k_proj.weight") {
                values = permute_for_gguf(&values, shape[0], shape[1], c.n_kv_heads);
            }
            let stored = if shape.len() == 1 {
                GgmlDType::F32
            } else {
                dtype
            };
            let data = if stored == GgmlDType::F32 {
                gguf_writer::f32_bytes(&values)
            } else {
                let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?;
                QTensor::quantize(&t, stored)?.data()?.into_owned()
            };
            out.push(GgufTensorData {
                name: names::gguf_name(Architecture::Llama, &name),
                dtype: stored,
                shape,
                data,
            });
        }
        let mut meta = self.gguf_metadata();
        edit(&mut meta);
        gguf_writer::write(path, &meta, &out).map_err(candle_core::Error::wrap)
    }

    /// Writes a Hugging Face directory: config.json, tokenizer.json, model.safetensors.
    pub fn write_hf_dir(&self, dir: &Path, dtype: safetensors::Dtype) -> std::io::Result<()> {
        self.write_hf_dir_sharded(dir, dtype, 1)
    }

    /// Like [`Spec::write_hf_dir`], with the tensors split over `shards` files
    /// named by model.safetensors.index.json when `shards > 1`.
    pub fn write_hf_dir_sharded(
        &self,
        dir: &Path,
        dtype: safetensors::Dtype,
        shards: usize,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let config = self.config().to_hf_json("float32");
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        let meta: std::collections::BTreeMap<String, GgufValue> =
            self.gguf_metadata().into_iter().collect();
        let tokenizer =
            crate::checkpoint::gguf_tokenizer::build(dir, &meta).map_err(std::io::Error::other)?;
        tokenizer
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors()
            .into_iter()
            .map(|(name, shape, values)| (name, shape, encode(&values, dtype)))
            .collect();
        let shards = shards.max(1);
        let per_shard = encoded.len().div_ceil(shards);
        let mut weight_map = serde_json::Map::new();
        for (i, chunk) in encoded.chunks(per_shard).enumerate() {
            let file = if shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, shards)
            };
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = chunk
                .iter()
                .map(|(name, shape, bytes)| {
                    weight_map.insert(name.clone(), file.clone().into());
                    let view = safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                        .expect("sizes match by construction");
                    (name.clone(), view)
                })
                .collect();
            safetensors::serialize_to_file(views, None, &dir.join(&file))
                .map_err(std::io::Error::other)?;
        }
        if shards > 1 {
            let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
            std::fs::write(
                dir.join("model.safetensors.index.json"),
                serde_json::to_string_pretty(&index)?,
            )?;
        }
        Ok(())
    }
}

/// f32 values as little-endian bytes of a safetensors dtype (F32, F16 or BF16).
pub fn encode(values: &[f32], dtype: safetensors::Dtype) -> Vec<u8> {
    match dtype {
        safetensors::Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        safetensors::Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py), written out as index
/// arithmetic: within each head, row `s * half + j` moves to `2 * j + s`.
pub fn permute_for_gguf(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let src = h * head_dim + s * half + j;
                let dst = h * head_dim + 2 * j + s;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// GPT-2's byte -> printable character table, as strings, in byte order.
pub fn byte_level_alphabet() -> Vec<String> {
    let mut extra = 0u32;
    (0u32..256)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).expect("valid code point").to_string()
        })
        .collect()
}

struct XorShift(u64);

impl XorShift {
    /// Uniform in [-1, 1).
    fn next_signed(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}
