//! Malformed GGUF files: header counts and lengths, hyper-parameters, vocabulary, weights.

use super::*;

// ---- GGUF -------------------------------------------------------------

/// The valid synthetic GGUF's bytes, written once per dtype.
pub(super) fn base_gguf(dtype: GgmlDType) -> &'static [u8] {
    static F32: OnceLock<Vec<u8>> = OnceLock::new();
    static Q8_0: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = match dtype {
        GgmlDType::F32 => &F32,
        GgmlDType::Q8_0 => &Q8_0,
        other => panic!("no base GGUF of {other:?}"),
    };
    cell.get_or_init(|| {
        let dir = common::tempdir();
        let p = dir.path().join("base.gguf");
        Spec::default().write_gguf(&p, dtype).unwrap();
        std::fs::read(&p).unwrap()
    })
}

/// The valid synthetic GGUF's metadata and tensors (as stored).
pub(super) fn gguf_parts(dtype: GgmlDType) -> (Meta, Vec<GgufTensorData>) {
    let bytes = base_gguf(dtype);
    let header = gguf::parse(Path::new("base.gguf"), bytes).unwrap();
    let tensors = gguf_writer::tensors_of(&header, bytes);
    (Spec::default().gguf_metadata(), tensors)
}

/// The synthetic GGUF's bytes, with metadata and tensors edited first.
pub(super) fn gguf_bytes_with(
    dtype: GgmlDType,
    edit: impl FnOnce(&mut Meta, &mut Vec<GgufTensorData>),
) -> Vec<u8> {
    let (mut meta, mut tensors) = gguf_parts(dtype);
    edit(&mut meta, &mut tensors);
    gguf_writer::to_bytes(&meta, &tensors)
}

pub(super) fn gguf_bytes() -> Vec<u8> {
    gguf_bytes_with(GgmlDType::F32, |_, _| {})
}

pub(super) fn write_gguf(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `inspect` of the synthetic GGUF with its raw bytes patched.
pub(super) fn gguf_patched(
    patch: impl Fn(&mut Vec<u8>) + 'static,
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let mut b = gguf_bytes();
        patch(&mut b);
        vec!["inspect".into(), s(&write_gguf(dir, &b))]
    }
}

/// `inspect` of the synthetic GGUF with one metadata key set.
pub(super) fn gguf_meta(key: &'static str, value: GgufValue) -> impl Fn(&Path) -> Vec<String> {
    gguf_edit(move |meta, _| set(meta, key, value.clone()))
}

/// `inspect` of the synthetic GGUF with metadata and tensors edited.
pub(super) fn gguf_edit(
    edit: impl Fn(&mut Meta, &mut Vec<GgufTensorData>) + 'static,
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let b = gguf_bytes_with(GgmlDType::F32, &edit);
        vec!["inspect".into(), s(&write_gguf(dir, &b))]
    }
}

pub(super) fn set(meta: &mut Meta, key: &str, value: GgufValue) {
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => meta.push((key.to_string(), value)),
    }
}

/// Where a key's value (its type id) starts.
pub(super) fn key_value(b: &[u8], key: &str) -> usize {
    find(b, key.as_bytes()) + key.len()
}

/// Where a tensor entry's n_dims field is.
pub(super) fn tensor_entry(b: &[u8], name: &str) -> usize {
    // The entry's name, not the metadata: entries follow the metadata.
    let meta_end = key_value(b, "tokenizer.ggml.add_bos_token");
    meta_end + find(&b[meta_end..], name.as_bytes()) + name.len()
}

/// The offset field of a tensor entry with `n_dims` dims.
pub(super) fn tensor_offset_field(b: &[u8], name: &str, n_dims: usize) -> usize {
    tensor_entry(b, name) + 4 + 8 * n_dims + 4
}

/// A generate run that loads every weight of the GGUF.
pub(super) fn gguf_loaded(
    dtype: GgmlDType,
    edit: impl Fn(&mut Vec<GgufTensorData>) + 'static,
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let b = gguf_bytes_with(dtype, |_, t| edit(t));
        let p = write_gguf(dir, &b);
        args(&["generate", &s(&p), "--prompt", "hi", "--max-tokens", "1"])
    }
}

pub(super) fn tensor_mut<'a>(
    tensors: &'a mut [GgufTensorData],
    name: &str,
) -> &'a mut GgufTensorData {
    tensors
        .iter_mut()
        .find(|t| t.name == name)
        .expect("tensor exists")
}

pub(super) fn set_f32(t: &mut GgufTensorData, i: usize, v: f32) {
    t.data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
}

/// The cases of this part of the corpus.
pub(super) fn cases() -> Vec<Case> {
    use GgufValue::*;
    vec![
        // ---- GGUF header counts and lengths ----
        case(
            "gguf_tensor_count_huge",
            &["m.gguf", "tensor count claims 1152921504606846976"],
            gguf_patched(|b| put_u64(b, 8, 1 << 60)),
        ),
        case(
            "gguf_metadata_count_huge",
            &["m.gguf", "metadata count claims"],
            gguf_patched(|b| put_u64(b, 16, u64::MAX)),
        ),
        case(
            "gguf_key_length_huge",
            &["m.gguf", "string length", "runs past the end"],
            gguf_patched(|b| put_u64(b, 24, u64::MAX / 2)),
        ),
        case(
            "gguf_string_value_length_huge",
            &["general.architecture", "string length", "runs past the end"],
            gguf_patched(|b| {
                let at = key_value(b, "general.architecture") + 4;
                put_u64(b, at, 1 << 50)
            }),
        ),
        case(
            "gguf_token_array_length_huge",
            &["tokenizer.ggml.tokens", "claims 1099511627776 entries"],
            gguf_patched(|b| {
                let at = key_value(b, "tokenizer.ggml.tokens") + 8;
                put_u64(b, at, 1 << 40)
            }),
        ),
        case(
            "gguf_nested_array_length_huge",
            &["test.nested", "claims 1099511627776 entries"],
            |dir| {
                let mut b = gguf_bytes_with(GgmlDType::F32, |m, _| {
                    m.push(("test.nested".into(), Array(9, vec![Array(4, vec![U32(1)])])))
                });
                let at = key_value(&b, "test.nested") + 4 + 4 + 8 + 4;
                put_u64(&mut b, at, 1 << 40);
                vec!["inspect".into(), s(&write_gguf(dir, &b))]
            },
        ),
        case(
            "gguf_arrays_nested_too_deep",
            &["test.deep", "nested too deep"],
            gguf_meta(
                "test.deep",
                Array(
                    9,
                    vec![Array(
                        9,
                        vec![Array(9, vec![Array(9, vec![Array(4, vec![U32(1)])])])],
                    )],
                ),
            ),
        ),
        case(
            "gguf_unknown_value_type",
            &["general.name", "unknown metadata value type 13"],
            gguf_patched(|b| {
                let at = key_value(b, "general.name");
                put_u32(b, at, 13)
            }),
        ),
        case(
            "gguf_unknown_array_element_type",
            &["tokenizer.ggml.merges", "unknown array element type 99"],
            gguf_patched(|b| {
                let at = key_value(b, "tokenizer.ggml.merges") + 4;
                put_u32(b, at, 99)
            }),
        ),
        case(
            "gguf_truncated_in_the_metadata",
            &["m.gguf", "truncated"],
            gguf_patched(|b| b.truncate(300)),
        ),
        case(
            "gguf_truncated_in_the_data",
            &["m.gguf", "runs past the end"],
            gguf_patched(|b| {
                let n = b.len();
                b.truncate(n - 100)
            }),
        ),
        case(
            "gguf_n_dims_zero",
            &["output_norm.weight", "0 dimensions"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight");
                put_u32(b, at, 0)
            }),
        ),
        case(
            "gguf_n_dims_five",
            &["output_norm.weight", "5 dimensions"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight");
                put_u32(b, at, 5)
            }),
        ),
        case(
            "gguf_dimension_of_zero",
            &["output_norm.weight", "dimension of 0"],
            gguf_edit(|_, t| {
                let n = tensor_mut(t, "output_norm.weight");
                n.shape = vec![0];
                n.data.clear();
            }),
        ),
        case(
            "gguf_dims_product_overflows",
            &["token_embd.weight", "more elements than a file"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "token_embd.weight") + 4;
                put_u64(b, at, 1 << 40);
                put_u64(b, at + 8, 1 << 40);
            }),
        ),
        case(
            "gguf_dims_product_beyond_the_file",
            &["token_embd.weight", "more elements than a file"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "token_embd.weight") + 4;
                put_u64(b, at, 1 << 31);
                put_u64(b, at + 8, 1 << 31);
            }),
        ),
        case(
            "gguf_shape_not_whole_blocks",
            &["token_embd.weight", "not a whole number of Q8_0 blocks"],
            |dir| {
                let mut b = gguf_bytes_with(GgmlDType::Q8_0, |_, _| {});
                let at = tensor_entry(&b, "token_embd.weight") + 4;
                put_u64(&mut b, at, 255);
                vec!["inspect".into(), s(&write_gguf(dir, &b))]
            },
        ),
        case(
            "gguf_offset_unaligned",
            &["output_norm.weight", "not aligned to 32"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                let o = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                put_u64(b, at, o + 1)
            }),
        ),
        case(
            "gguf_offset_past_the_end",
            &["output_norm.weight", "runs past the end"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                put_u64(b, at, 1 << 40)
            }),
        ),
        case(
            "gguf_offset_near_u64_max",
            &["output_norm.weight", "runs past the end"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                put_u64(b, at, u64::MAX - 31)
            }),
        ),
        case(
            "gguf_tensors_overlap",
            &["m.gguf", "overlap"],
            gguf_patched(|b| {
                let at = tensor_offset_field(b, "output_norm.weight", 1);
                put_u64(b, at, 0)
            }),
        ),
        case(
            "gguf_alignment_zero",
            &["general.alignment = 0", "power of two"],
            gguf_meta("general.alignment", U32(0)),
        ),
        case(
            "gguf_alignment_not_a_power_of_two",
            &["general.alignment = 3", "power of two"],
            gguf_meta("general.alignment", U32(3)),
        ),
        case(
            "gguf_alignment_a_string",
            &["general.alignment", "power of two"],
            gguf_meta("general.alignment", String("32".into())),
        ),
        case(
            "gguf_duplicate_tensor",
            &["output_norm.weight", "appears twice"],
            gguf_edit(|_, t| {
                let n = tensor_mut(t, "output_norm.weight");
                let copy = GgufTensorData {
                    name: n.name.clone(),
                    dtype: n.dtype,
                    shape: n.shape.clone(),
                    data: n.data.clone(),
                };
                t.push(copy);
            }),
        ),
        case(
            "gguf_duplicate_key",
            &["llama.block_count", "appears twice"],
            gguf_edit(|m, _| m.push(("llama.block_count".into(), U32(2)))),
        ),
        case(
            "gguf_block_count_a_string",
            &["llama.block_count must be a non-negative integer", "\"2\""],
            gguf_meta("llama.block_count", String("2".into())),
        ),
        case(
            "gguf_block_count_negative",
            &["llama.block_count must be a non-negative integer", "-2"],
            gguf_meta("llama.block_count", I32(-2)),
        ),
        case(
            "gguf_rope_base_a_string",
            &["llama.rope.freq_base must be a number"],
            gguf_meta("llama.rope.freq_base", String("1e4".into())),
        ),
        case(
            "gguf_architecture_missing",
            &["m.gguf", "general.architecture"],
            gguf_edit(|m, _| m.retain(|(k, _)| k != "general.architecture")),
        ),
        case(
            "gguf_architecture_not_a_string",
            &["general.architecture must be a string"],
            gguf_meta("general.architecture", U32(1)),
        ),
        case(
            "gguf_invalid_utf8_key",
            &["metadata key #1", "not valid UTF-8"],
            gguf_patched(|b| {
                let at = find(b, b"general.name");
                b[at] = 0xff
            }),
        ),
        case(
            "gguf_invalid_utf8_value",
            &["general.name", "not valid UTF-8"],
            gguf_patched(|b| {
                let at = find(b, b"mwtop synthetic");
                b[at + 1] = 0xc3;
                b[at + 2] = 0x28
            }),
        ),
        case(
            "gguf_invalid_utf8_tensor_name",
            &["tensor #", "name", "not valid UTF-8"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight") - "output_norm.weight".len();
                b[at] = 0xfe
            }),
        ),
        case(
            "gguf_unsupported_tensor_type",
            &["output_norm.weight", "GGML type id 16"],
            gguf_patched(|b| {
                let at = tensor_entry(b, "output_norm.weight") + 4 + 8;
                put_u32(b, at, 16)
            }),
        ),
        // ---- GGUF hyper-parameters ----
        case(
            "gguf_block_count_u32_max",
            &["4294967295 layers", "llama.block_count", "holds only"],
            gguf_meta("llama.block_count", U32(u32::MAX)),
        ),
        case(
            "gguf_block_count_1e8",
            &["100000000 layers", "llama.block_count", "holds only"],
            gguf_meta("llama.block_count", U32(100_000_000)),
        ),
        case(
            "gguf_block_count_one_fewer",
            &["1 layers", "llama.block_count", "blk.1."],
            gguf_meta("llama.block_count", U32(1)),
        ),
        case(
            "gguf_block_count_one_more",
            &["blk.2.", "lacks"],
            gguf_meta("llama.block_count", U32(3)),
        ),
        case(
            "gguf_embedding_length_zero",
            &["llama.embedding_length is 0"],
            gguf_meta("llama.embedding_length", U32(0)),
        ),
        case(
            "gguf_head_count_zero",
            &["llama.attention.head_count is 0"],
            gguf_meta("llama.attention.head_count", U32(0)),
        ),
        case(
            "gguf_head_count_not_dividing",
            &["llama.embedding_length 256 is not a multiple of llama.attention.head_count 3"],
            gguf_meta("llama.attention.head_count", U32(3)),
        ),
        case(
            "gguf_head_count_kv_not_dividing",
            &["llama.attention.head_count_kv", "not a multiple"],
            gguf_meta("llama.attention.head_count_kv", U32(3)),
        ),
        case(
            "gguf_head_count_kv_zero",
            &["llama.attention.head_count_kv is 0"],
            gguf_meta("llama.attention.head_count_kv", U32(0)),
        ),
        case(
            "gguf_key_length_odd",
            &["llama.attention.key_length", "must be even"],
            gguf_meta("llama.attention.key_length", U32(63)),
        ),
        case(
            "gguf_feed_forward_length_huge",
            &["d_ff 100000000000", "llama.feed_forward_length", "elements"],
            gguf_meta("llama.feed_forward_length", U64(100_000_000_000)),
        ),
        case(
            "gguf_context_length_zero",
            &["llama.context_length is 0"],
            gguf_meta("llama.context_length", U32(0)),
        ),
        case(
            "gguf_context_length_absurd",
            &["context 1099511627776", "llama.context_length"],
            gguf_meta("llama.context_length", U64(1 << 40)),
        ),
        case(
            "gguf_rope_base_nan",
            &["llama.rope.freq_base = NaN", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F32(f32::NAN)),
        ),
        case(
            "gguf_rope_base_negative",
            &["llama.rope.freq_base = -10000", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F32(-10000.0)),
        ),
        case(
            "gguf_rope_base_zero",
            &["llama.rope.freq_base = 0", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F32(0.0)),
        ),
        case(
            "gguf_rope_base_infinite",
            &["llama.rope.freq_base = inf", "RoPE base"],
            gguf_meta("llama.rope.freq_base", F64(f64::INFINITY)),
        ),
        case(
            "gguf_epsilon_negative",
            &[
                "llama.attention.layer_norm_rms_epsilon = -0.00001",
                "epsilon",
            ],
            gguf_meta("llama.attention.layer_norm_rms_epsilon", F32(-1e-5)),
        ),
        case(
            "gguf_epsilon_nan",
            &["llama.attention.layer_norm_rms_epsilon = NaN", "epsilon"],
            gguf_meta("llama.attention.layer_norm_rms_epsilon", F32(f32::NAN)),
        ),
        case(
            "gguf_vocab_size_mismatch",
            &["token_embd.weight", "[300, 256]", "[259, 256]"],
            gguf_meta("llama.vocab_size", U32(300)),
        ),
        case(
            "gguf_unused_tensor",
            &["blk.0.extra.weight", "does not use"],
            gguf_edit(|_, t| {
                t.push(GgufTensorData {
                    name: "blk.0.extra.weight".into(),
                    dtype: GgmlDType::F32,
                    shape: vec![8],
                    data: vec![0; 32],
                })
            }),
        ),
        case(
            "gguf_missing_tensor",
            &["blk.1.ffn_down.weight", "lacks"],
            gguf_edit(|_, t| t.retain(|t| t.name != "blk.1.ffn_down.weight")),
        ),
        case(
            "gguf_bos_id_not_a_token_id",
            &["tokenizer.ggml.bos_token_id = 9999999999", "not a token id"],
            gguf_meta("tokenizer.ggml.bos_token_id", U64(9_999_999_999)),
        ),
        // ---- GGUF vocabulary ----
        case(
            "gguf_token_list_one_short",
            &["tokenizer.ggml.tokens lists 258 tokens", "259"],
            gguf_edit(|m, _| {
                if let Some((_, Array(_, items))) =
                    m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens")
                {
                    items.pop();
                }
            }),
        ),
        case(
            "gguf_tokens_not_strings",
            &["tokenizer.ggml.tokens must be a list of strings"],
            gguf_meta("tokenizer.ggml.tokens", Array(4, vec![U32(1); 259])),
        ),
        case(
            "gguf_scores_of_another_length",
            &["tokenizer.ggml.scores has 10 entries for 259 tokens"],
            gguf_meta("tokenizer.ggml.scores", Array(6, vec![F32(0.0); 10])),
        ),
        case(
            "gguf_token_types_of_another_length",
            &["tokenizer.ggml.token_type has 3 entries for 259 tokens"],
            gguf_meta("tokenizer.ggml.token_type", Array(5, vec![I32(1); 3])),
        ),
        case(
            "gguf_merge_without_a_space",
            &["tokenizer.ggml.merges[0]", "\"ab\""],
            gguf_meta("tokenizer.ggml.merges", Array(8, vec![String("ab".into())])),
        ),
        case(
            "gguf_merge_of_unknown_tokens",
            &["tokenizer.ggml.merges[0]", "\"abc xyz\"", "not two tokens"],
            gguf_meta(
                "tokenizer.ggml.merges",
                Array(8, vec![String("abc xyz".into()), String("a b".into())]),
            ),
        ),
        // Found by fuzzing: tokenizers' BPE builder panicked on a merge whose
        // result is longer than every token.
        case(
            "gguf_merge_making_a_token_outside_the_vocabulary",
            &[
                "tokenizer.ggml.merges[0]",
                "makes \"ab\"",
                "not in the vocabulary",
            ],
            gguf_meta(
                "tokenizer.ggml.merges",
                Array(8, vec![String("a b".into())]),
            ),
        ),
        case(
            "gguf_bos_outside_the_vocabulary",
            &[
                "tokenizer.ggml.bos_token_id = 9999",
                "outside the vocabulary",
            ],
            gguf_meta("tokenizer.ggml.bos_token_id", U32(9999)),
        ),
        // ---- weights ----
        case(
            "gguf_nan_in_a_norm_weight",
            &["output_norm.weight", "model.norm.weight", "NaN or infinite"],
            gguf_loaded(GgmlDType::F32, |t| {
                set_f32(tensor_mut(t, "output_norm.weight"), 3, f32::NAN)
            }),
        ),
        case(
            "gguf_inf_in_the_embedding",
            &["token_embd.weight", "NaN or infinite"],
            gguf_loaded(GgmlDType::F32, |t| {
                set_f32(tensor_mut(t, "token_embd.weight"), 5, f32::INFINITY)
            }),
        ),
        case(
            "gguf_nan_q8_0_scale",
            &["blk.0.attn_q.weight", "NaN or infinite"],
            gguf_loaded(GgmlDType::Q8_0, |t| {
                // A Q8_0 block: an f16 scale, then 32 int8 values.
                let q = tensor_mut(t, "blk.0.attn_q.weight");
                q.data[..2].copy_from_slice(&0x7e00u16.to_le_bytes());
            }),
        ),
        case(
            "safetensors_nan_in_a_norm_weight",
            &["model.norm.weight", "NaN or infinite"],
            |dir| {
                let m = hf(dir);
                st_set_f32(&m, "model.norm.weight", 0, f32::NAN);
                args(&["eval", &s(&m), "--text", &s(&text(dir))])
            },
        ),
        case(
            "safetensors_inf_in_down_proj",
            &["model.layers.1.mlp.down_proj.weight", "NaN or infinite"],
            |dir| {
                let m = hf(dir);
                st_set_f32(
                    &m,
                    "model.layers.1.mlp.down_proj.weight",
                    7,
                    f32::NEG_INFINITY,
                );
                args(&["generate", &s(&m), "--prompt", "hi", "--max-tokens", "1"])
            },
        ),
    ]
}
