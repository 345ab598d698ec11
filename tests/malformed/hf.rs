//! Malformed Hugging Face directories (safetensors, config.json, tokenizer files), and the helpers that build runs of the valid one.

use super::*;

// ---- Hugging Face directories ------------------------------------------

pub(super) type Files = Vec<(std::ffi::OsString, Vec<u8>)>;

/// The files of the valid synthetic HF directory in `shards` files, written once.
pub(super) fn base_hf(shards: usize) -> &'static Files {
    static ONE: OnceLock<Files> = OnceLock::new();
    static TWO: OnceLock<Files> = OnceLock::new();
    let cell = if shards == 1 { &ONE } else { &TWO };
    cell.get_or_init(|| {
        let dir = common::tempdir();
        Spec::default()
            .write_hf_dir_sharded(dir.path(), safetensors::Dtype::F32, shards)
            .unwrap();
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect()
    })
}

pub(super) fn hf_dir(dir: &Path, shards: usize) -> PathBuf {
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    for (name, bytes) in base_hf(shards) {
        std::fs::write(m.join(name), bytes).unwrap();
    }
    m
}

pub(super) fn hf(dir: &Path) -> PathBuf {
    hf_dir(dir, 1)
}

pub(super) fn hf_sharded(dir: &Path) -> PathBuf {
    hf_dir(dir, 2)
}

pub(super) fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// `inspect` of the HF directory with config.json edited.
pub(super) fn config(edit: impl Fn(&mut Value) + 'static) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        edit_json(&m.join("config.json"), &edit);
        vec!["inspect".into(), s(&m)]
    }
}

/// `inspect` of the HF directory after `f` changed it.
pub(super) fn hf_with(f: impl Fn(&Path) + 'static) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        f(&m);
        vec!["inspect".into(), s(&m)]
    }
}

/// model.safetensors with its header rewritten by `edit` (data kept).
pub(super) fn st_header(m: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = m.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_string(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

/// model.safetensors with raw bytes patched.
pub(super) fn st_bytes(m: &Path, patch: impl FnOnce(&mut Vec<u8>)) {
    let p = m.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    patch(&mut b);
    std::fs::write(&p, b).unwrap();
}

/// model.safetensors rewritten with tensors added (F32 values).
pub(super) fn st_add(m: &Path, name: &str, shape: Vec<usize>) {
    let p = m.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n: usize = shape.iter().product();
    let extra = vec![0u8; 4 * n];
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    views.push((
        name.to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &extra).unwrap(),
    ));
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&p, out).unwrap();
}

/// Sets one f32 of a tensor in model.safetensors.
pub(super) fn st_set_f32(m: &Path, tensor: &str, i: usize, v: f32) {
    st_bytes(m, |b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
        let start = h[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
        let at = 8 + n + start + 4 * i;
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    });
}

pub(super) fn text(dir: &Path) -> PathBuf {
    let t = dir.join("t.txt");
    std::fs::write(&t, "some text to score, long enough for a few windows").unwrap();
    t
}

/// `eval` of the valid HF model over a text made by `make`.
pub(super) fn eval_text(
    make: impl Fn(&Path) -> PathBuf + 'static,
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let t = make(dir);
        args(&["eval", &s(&m), "--text", &s(&t)])
    }
}

/// `generate` of the valid HF model with extra arguments.
pub(super) fn generate(extra: &'static [&'static str]) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let mut a = args(&["generate", &s(&m), "--prompt", "hi"]);
        a.extend(args(extra));
        a
    }
}

/// `eval` of the valid HF model with extra arguments.
pub(super) fn eval(extra: &'static [&'static str]) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let t = text(dir);
        let mut a = args(&["eval", &s(&m), "--text", &s(&t)]);
        a.extend(args(extra));
        a
    }
}

/// Another subcommand of the valid HF model with extra arguments.
pub(super) fn sub(
    cmd: &'static str,
    extra: &'static [&'static str],
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let mut a = args(&[cmd, &s(&m)]);
        a.extend(args(extra));
        a
    }
}

pub(super) fn with_adapter(
    make: impl Fn(&Path) -> PathBuf + 'static,
) -> impl Fn(&Path) -> Vec<String> {
    move |dir| {
        let m = hf(dir);
        let a = make(dir);
        args(&[
            "generate",
            &s(&m),
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
            "--adapter",
            &s(&a),
        ])
    }
}

/// The cases of this part of the corpus.
pub(super) fn cases() -> Vec<Case> {
    vec![
        // ---- safetensors directories ----
        case(
            "safetensors_header_length_huge",
            &[
                "model.safetensors",
                "not a valid safetensors file",
                "header length",
            ],
            hf_with(|m| st_bytes(m, |b| put_u64(b, 0, u64::MAX / 2))),
        ),
        case(
            "safetensors_header_beyond_the_file",
            &["model.safetensors", "header length", "runs past the end"],
            hf_with(|m| {
                st_bytes(m, |b| {
                    let n = b.len() as u64;
                    put_u64(b, 0, n)
                })
            }),
        ),
        case(
            "safetensors_header_not_json",
            &["model.safetensors", "not a JSON object"],
            hf_with(|m| st_bytes(m, |b| b[8] = b'[')),
        ),
        case(
            "safetensors_shape_product_overflows",
            &["model.norm.weight", "overflows"],
            hf_with(|m| {
                st_header(m, |h| {
                    h["model.norm.weight"]["shape"] = json!([1u64 << 62, 1u64 << 62])
                })
            }),
        ),
        case(
            "safetensors_size_mismatch",
            &["model.norm.weight", "needs 1020 bytes", "hold 1024"],
            hf_with(|m| st_header(m, |h| h["model.norm.weight"]["shape"] = json!([255]))),
        ),
        case(
            "safetensors_offsets_past_the_end",
            &["model.norm.weight", "run past the end of the data"],
            hf_with(|m| {
                st_header(m, |h| {
                    h["model.norm.weight"]["data_offsets"] =
                        json!([1u64 << 40, (1u64 << 40) + 1024])
                })
            }),
        ),
        case(
            "safetensors_negative_shape",
            &["model.norm.weight", "non-negative integers"],
            hf_with(|m| st_header(m, |h| h["model.norm.weight"]["shape"] = json!([-256]))),
        ),
        case(
            "safetensors_unused_tensor",
            &["model.layers.0.mlp.extra.weight", "does not use"],
            hf_with(|m| st_add(m, "model.layers.0.mlp.extra.weight", vec![4])),
        ),
        case(
            "safetensors_layer_past_the_count",
            &["2 layers", "model.layers.2.mlp.down_proj.weight"],
            hf_with(|m| st_add(m, "model.layers.2.mlp.down_proj.weight", vec![4])),
        ),
        case(
            "safetensors_bias_of_the_wrong_length",
            &["model.layers.0.self_attn.q_proj.bias", "256 rows"],
            hf_with(|m| st_add(m, "model.layers.0.self_attn.q_proj.bias", vec![3])),
        ),
        case(
            "safetensors_fifo",
            &["model.safetensors", "not a regular file (a FIFO)"],
            hf_with(|m| fifo_at(&m.join("model.safetensors"))),
        ),
        case(
            "safetensors_a_directory",
            &["model.safetensors", "not a regular file (a directory)"],
            hf_with(|m| dir_at(&m.join("model.safetensors"))),
        ),
        case(
            "safetensors_symlink_loop",
            &["model.safetensors", "symbolic links"],
            hf_with(|m| loop_at(&m.join("model.safetensors"))),
        ),
        case(
            "safetensors_empty",
            &["model.safetensors", "empty"],
            hf_with(|m| std::fs::write(m.join("model.safetensors"), b"").unwrap()),
        ),
        case(
            "config_fifo",
            &["config.json", "not a regular file (a FIFO)"],
            hf_with(|m| fifo_at(&m.join("config.json"))),
        ),
        case(
            "config_a_directory",
            &["config.json", "not a regular file (a directory)"],
            hf_with(|m| dir_at(&m.join("config.json"))),
        ),
        case(
            "config_symlink_loop",
            &["config.json", "symbolic links"],
            hf_with(|m| loop_at(&m.join("config.json"))),
        ),
        case(
            "config_huge_sparse",
            &["config.json", "more than the 64 MiB limit"],
            hf_with(|m| sparse_at(&m.join("config.json"), 1 << 30)),
        ),
        case(
            "config_invalid_json",
            &["config.json", "invalid JSON"],
            hf_with(|m| std::fs::write(m.join("config.json"), "{ not json").unwrap()),
        ),
        case(
            "config_not_an_object",
            &["config.json", "expected a JSON object"],
            hf_with(|m| std::fs::write(m.join("config.json"), "[1, 2]").unwrap()),
        ),
        case(
            "config_not_utf8",
            &["config.json", "not UTF-8"],
            hf_with(|m| std::fs::write(m.join("config.json"), b"{\"a\": \"\xff\"}").unwrap()),
        ),
        case(
            "config_layers_u32_max",
            &["4294967295 layers", "num_hidden_layers", "holds only"],
            config(|c| c["num_hidden_layers"] = json!(u32::MAX)),
        ),
        case(
            "config_layers_one_fewer",
            &["1 layers", "num_hidden_layers", "model.layers.1."],
            config(|c| c["num_hidden_layers"] = json!(1)),
        ),
        case(
            "config_layers_one_more",
            &["model.layers.2.", "lacks"],
            config(|c| c["num_hidden_layers"] = json!(3)),
        ),
        case(
            "config_layers_a_string",
            &["num_hidden_layers must be a non-negative integer"],
            config(|c| c["num_hidden_layers"] = json!("2")),
        ),
        case(
            "config_hidden_size_zero",
            &["config.json", "hidden_size is 0"],
            config(|c| c["hidden_size"] = json!(0)),
        ),
        case(
            "config_heads_zero",
            &["num_attention_heads is 0"],
            config(|c| c["num_attention_heads"] = json!(0)),
        ),
        case(
            "config_heads_not_dividing",
            &["hidden_size 256 is not a multiple of num_attention_heads 3"],
            config(|c| {
                c["num_attention_heads"] = json!(3);
                c.as_object_mut().unwrap().remove("head_dim");
            }),
        ),
        case(
            "config_kv_heads_not_dividing",
            &["num_key_value_heads", "not a multiple"],
            config(|c| c["num_key_value_heads"] = json!(3)),
        ),
        case(
            "config_context_zero",
            &["max_position_embeddings is 0"],
            config(|c| c["max_position_embeddings"] = json!(0)),
        ),
        case(
            "config_context_absurd",
            &["context 1099511627776", "max_position_embeddings"],
            config(|c| c["max_position_embeddings"] = json!(1u64 << 40)),
        ),
        case(
            "config_rope_theta_negative",
            &["rope_theta = -10000", "RoPE base"],
            config(|c| c["rope_theta"] = json!(-10000.0)),
        ),
        case(
            "config_rope_theta_zero",
            &["rope_theta = 0", "RoPE base"],
            config(|c| c["rope_theta"] = json!(0)),
        ),
        case(
            "config_rope_theta_nan_string",
            &["rope_theta must be a number", "NaN"],
            config(|c| c["rope_theta"] = json!("NaN")),
        ),
        case(
            "config_epsilon_negative",
            &["rms_norm_eps = -0.00001", "epsilon"],
            config(|c| c["rms_norm_eps"] = json!(-1e-5)),
        ),
        case(
            "config_epsilon_nan_string",
            &["rms_norm_eps must be a number"],
            config(|c| c["rms_norm_eps"] = json!("NaN")),
        ),
        case(
            "config_rope_scaling_factor_negative",
            &["rope_scaling.factor = -2"],
            config(|c| c["rope_scaling"] = json!({"rope_type": "linear", "factor": -2.0})),
        ),
        case(
            "config_vocab_mismatch",
            &["model.embed_tokens.weight", "[300, 256]", "[259, 256]"],
            config(|c| c["vocab_size"] = json!(300)),
        ),
        case(
            "config_d_ff_huge",
            &["d_ff 100000000000", "intermediate_size"],
            config(|c| c["intermediate_size"] = json!(100_000_000_000u64)),
        ),
        case(
            "index_names_a_missing_shard",
            &["model-00002-of-00002.safetensors", "no such file"],
            |dir| {
                let m = hf_sharded(dir);
                std::fs::remove_file(m.join("model-00002-of-00002.safetensors")).unwrap();
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_shard_escapes_the_directory",
            &[
                "model.safetensors.index.json",
                "\"../x.safetensors\"",
                "not a file in this directory",
            ],
            |dir| {
                let m = hf_sharded(dir);
                edit_json(&m.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["model.norm.weight"] = json!("../x.safetensors")
                });
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_entry_in_the_wrong_shard",
            &[
                "weight_map puts model.embed_tokens.weight in model-00002-of-00002.safetensors",
                "does not hold it",
            ],
            |dir| {
                let m = hf_sharded(dir);
                edit_json(&m.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["model.embed_tokens.weight"] =
                        json!("model-00002-of-00002.safetensors")
                });
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_invalid_json",
            &["model.safetensors.index.json", "invalid JSON"],
            |dir| {
                let m = hf_sharded(dir);
                std::fs::write(m.join("model.safetensors.index.json"), "{").unwrap();
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_entry_not_a_string",
            &["weight_map entry model.norm.weight is not a file name"],
            |dir| {
                let m = hf_sharded(dir);
                edit_json(&m.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["model.norm.weight"] = json!(7)
                });
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "index_fifo",
            &["model.safetensors.index.json", "a FIFO"],
            |dir| {
                let m = hf_sharded(dir);
                fifo_at(&m.join("model.safetensors.index.json"));
                vec!["inspect".into(), s(&m)]
            },
        ),
        case(
            "tokenizer_json_invalid",
            &["tokenizer.json", "tokenizer"],
            |dir| {
                let m = hf(dir);
                std::fs::write(m.join("tokenizer.json"), "{ nope").unwrap();
                args(&["generate", &s(&m), "--prompt", "hi"])
            },
        ),
        case(
            "tokenizer_json_fifo",
            &["tokenizer.json", "a FIFO"],
            |dir| {
                let m = hf(dir);
                fifo_at(&m.join("tokenizer.json"));
                args(&["generate", &s(&m), "--prompt", "hi"])
            },
        ),
    ]
}
