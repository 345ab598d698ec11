//! Broken checkpoints: every case gets one clear line naming the file and the
//! problem, exit status 1, and no panic (which would exit 101) or abort.

mod common;

use std::path::Path;

use candle_core::quantized::GgmlDType;
use mwtop::checkpoint::gguf::GgufValue;
use mwtop::checkpoint::gguf_writer::{self, GgufTensorData};
use mwtop::synthetic::Spec;

/// Runs `mwtop inspect PATH` and checks the failure is one line with all `needles`.
fn assert_one_line_error(path: &Path, needles: &[&str]) {
    let out = common::mwtop(&["inspect", common::path_str(path)]);
    common::assert_one_line_error(&out, needles);
    assert!(common::stdout(&out).is_empty(), "nothing on stdout");
    assert!(common::stderr(&out).starts_with("mwtop: error: "));
}

fn safetensors_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    out
}

/// A valid tiny HF directory whose model.safetensors is then replaced.
fn hf_dir_with_weights(dir: &Path, weights: Option<Vec<u8>>) {
    Spec::default()
        .write_hf_dir(dir, safetensors::Dtype::F32)
        .unwrap();
    if let Some(w) = weights {
        std::fs::write(dir.join("model.safetensors"), w).unwrap();
    }
}

#[test]
fn missing_path() {
    let dir = common::tempdir();
    let p = dir.path().join("nothing-here");
    assert_one_line_error(&p, &["nothing-here", "no such file"]);
}

#[test]
fn directory_without_config_json() {
    let dir = common::tempdir();
    assert_one_line_error(dir.path(), &["no config.json"]);
}

#[test]
fn truncated_safetensors() {
    let dir = common::tempdir();
    hf_dir_with_weights(dir.path(), None);
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        dir.path(),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn truncated_inside_the_safetensors_header() {
    let dir = common::tempdir();
    hf_dir_with_weights(
        dir.path(),
        Some(b"\xff\xff\x00\x00\x00\x00\x00\x00{\"a\"".to_vec()),
    );
    assert_one_line_error(
        dir.path(),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn safetensors_offsets_past_the_end() {
    let dir = common::tempdir();
    let header = r#"{"x":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    hf_dir_with_weights(dir.path(), Some(safetensors_file(header, 16)));
    assert_one_line_error(
        dir.path(),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn safetensors_overlapping_tensors() {
    let dir = common::tempdir();
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    hf_dir_with_weights(dir.path(), Some(safetensors_file(header, 24)));
    assert_one_line_error(dir.path(), &["model.safetensors", "invalid offset"]);
}

#[test]
fn safetensors_negative_size() {
    let dir = common::tempdir();
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#;
    hf_dir_with_weights(dir.path(), Some(safetensors_file(header, 16)));
    assert_one_line_error(
        dir.path(),
        &["model.safetensors", "not a valid safetensors file"],
    );
    let header = r#"{"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#;
    hf_dir_with_weights(dir.path(), Some(safetensors_file(header, 16)));
    assert_one_line_error(
        dir.path(),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn safetensors_unsupported_dtype() {
    let dir = common::tempdir();
    let header = r#"{"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    hf_dir_with_weights(dir.path(), Some(safetensors_file(header, 16)));
    assert_one_line_error(dir.path(), &["model.safetensors", "unsupported", "I64"]);
}

#[test]
fn config_disagrees_with_tensor_shapes() {
    let dir = common::tempdir();
    hf_dir_with_weights(dir.path(), None);
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"intermediate_size\": 512", "\"intermediate_size\": 1024");
    std::fs::write(&p, text).unwrap();
    assert_one_line_error(
        dir.path(),
        &[
            "config.json",
            "[1024, 256]",
            "model.layers.0.mlp.gate_proj.weight",
            "[512, 256]",
        ],
    );
}

#[test]
fn config_with_missing_layers() {
    let dir = common::tempdir();
    hf_dir_with_weights(dir.path(), None);
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    std::fs::write(&p, text).unwrap();
    assert_one_line_error(dir.path(), &["config.json", "model.layers.2.", "lacks"]);
}

/// Sizes a header claims are bounded by what the tensors can hold, before
/// anything is sized from them (a hostile header must not make mwtop
/// allocate gigabytes), and a layer count that hides layers is refused.
#[test]
fn config_sizes_beyond_the_tensors() {
    for (from, to, needles) in [
        (
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 4294967295",
            &["4294967295 layers", "holds only"][..],
        ),
        (
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 1",
            &["1 layers", "model.layers.1."][..],
        ),
        (
            "\"intermediate_size\": 512",
            "\"intermediate_size\": 100000000000",
            &["d_ff 100000000000", "elements"][..],
        ),
        (
            "\"max_position_embeddings\": 512",
            "\"max_position_embeddings\": 1099511627776",
            &["context 1099511627776"][..],
        ),
    ] {
        let dir = common::tempdir();
        hf_dir_with_weights(dir.path(), None);
        let p = dir.path().join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{from} in {text}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
        let mut all = vec!["config.json"];
        all.extend_from_slice(needles);
        assert_one_line_error(dir.path(), &all);
    }
}

#[test]
fn unsupported_architecture() {
    let dir = common::tempdir();
    hf_dir_with_weights(dir.path(), None);
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"");
    std::fs::write(&p, text).unwrap();
    assert_one_line_error(dir.path(), &["config.json", "unsupported", "gpt2"]);
}

#[test]
fn invalid_config_json() {
    let dir = common::tempdir();
    hf_dir_with_weights(dir.path(), None);
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert_one_line_error(dir.path(), &["config.json", "invalid JSON"]);
}

fn tiny_gguf() -> Vec<u8> {
    let t = GgufTensorData {
        name: "token_embd.weight".into(),
        dtype: GgmlDType::F32,
        shape: vec![2, 32],
        data: gguf_writer::f32_bytes(&[0.5; 64]),
    };
    gguf_writer::to_bytes(
        &[(
            "general.architecture".into(),
            GgufValue::String("llama".into()),
        )],
        &[t],
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn gguf_wrong_magic() {
    let dir = common::tempdir();
    let mut b = tiny_gguf();
    b[..4].copy_from_slice(b"GGML");
    let p = write(dir.path(), "bad.gguf", &b);
    assert_one_line_error(&p, &["bad.gguf", "not a GGUF file"]);
}

#[test]
fn gguf_unknown_version() {
    let dir = common::tempdir();
    let mut b = tiny_gguf();
    b[4..8].copy_from_slice(&9u32.to_le_bytes());
    let p = write(dir.path(), "v9.gguf", &b);
    assert_one_line_error(&p, &["v9.gguf", "unsupported", "GGUF version 9"]);
}

#[test]
fn gguf_lying_tensor_count() {
    let dir = common::tempdir();
    let mut b = tiny_gguf();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let p = write(dir.path(), "count.gguf", &b);
    assert_one_line_error(
        &p,
        &["count.gguf", "tensor count claims 1152921504606846976"],
    );
}

#[test]
fn gguf_lying_metadata_count() {
    let dir = common::tempdir();
    let mut b = tiny_gguf();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = write(dir.path(), "kv.gguf", &b);
    assert_one_line_error(&p, &["kv.gguf", "metadata count claims"]);
}

#[test]
fn gguf_lying_string_length() {
    let dir = common::tempdir();
    let mut b = tiny_gguf();
    // The first metadata key's length.
    b[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let p = write(dir.path(), "str.gguf", &b);
    assert_one_line_error(&p, &["str.gguf", "string length", "runs past the end"]);
}

#[test]
fn gguf_truncated_data() {
    let dir = common::tempdir();
    let b = tiny_gguf();
    let p = write(dir.path(), "short.gguf", &b[..b.len() - 100]);
    assert_one_line_error(
        &p,
        &["short.gguf", "token_embd.weight", "runs past the end"],
    );
}

#[test]
fn gguf_unsupported_tensor_type() {
    let dir = common::tempdir();
    let mut b = tiny_gguf();
    // The type id sits 12 bytes before the end of the single tensor entry (type u32, offset u64).
    let header_end = b
        .windows(17)
        .position(|w| w == b"token_embd.weight")
        .unwrap()
        + 17
        + 4
        + 16;
    b[header_end..header_end + 4].copy_from_slice(&16u32.to_le_bytes());
    let p = write(dir.path(), "iq.gguf", &b);
    assert_one_line_error(&p, &["iq.gguf", "unsupported", "GGML type id 16"]);
}

#[test]
fn gguf_unsupported_architecture() {
    let dir = common::tempdir();
    let b = gguf_writer::to_bytes(
        &[(
            "general.architecture".into(),
            GgufValue::String("gpt2".into()),
        )],
        &[],
    );
    let p = write(dir.path(), "arch.gguf", &b);
    assert_one_line_error(&p, &["arch.gguf", "unsupported", "\"gpt2\""]);
}

#[test]
fn gguf_overlapping_tensors() {
    let dir = common::tempdir();
    let t = |name: &str| GgufTensorData {
        name: name.into(),
        dtype: GgmlDType::F32,
        shape: vec![32],
        data: gguf_writer::f32_bytes(&[1.0; 32]),
    };
    let mut b = gguf_writer::to_bytes(
        &[(
            "general.architecture".into(),
            GgufValue::String("llama".into()),
        )],
        &[t("a.weight"), t("b.weight")],
    );
    // Point b's offset (the last 8 bytes of its entry) at a's data.
    let pos = b.windows(8).position(|w| w == b"b.weight").unwrap() + 8 + 4 + 8 + 4;
    b[pos..pos + 8].copy_from_slice(&0u64.to_le_bytes());
    let p = write(dir.path(), "overlap.gguf", &b);
    assert_one_line_error(&p, &["overlap.gguf", "overlap"]);
}

#[test]
fn empty_file() {
    let dir = common::tempdir();
    let p = write(dir.path(), "empty.gguf", b"");
    assert_one_line_error(&p, &["empty.gguf", "empty"]);
}

#[test]
fn gguf_missing_hyper_parameters() {
    let dir = common::tempdir();
    let p = write(dir.path(), "nohp.gguf", &tiny_gguf());
    assert_one_line_error(&p, &["nohp.gguf", "llama.embedding_length"]);
}

#[test]
fn valid_synthetic_gguf_still_opens() {
    // The control: the unbroken file is fine, so the cases above fail for their reason.
    let dir = common::tempdir();
    let p = dir.path().join("ok.gguf");
    Spec::default().write_gguf(&p, GgmlDType::Q8_0).unwrap();
    let out = common::mwtop(&["inspect", common::path_str(&p)]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
}

/// GGUF settings that change the math and that mwtop does not compute are
/// refused by their key, never run as a plain Llama.
#[test]
fn gguf_settings_not_computed_are_refused() {
    for (key, value, needles) in [
        (
            "llama.expert_count",
            8u32,
            &["llama.expert_count = 8", "mixture-of-experts"][..],
        ),
        (
            "llama.rope.dimension_count",
            32,
            &["llama.rope.dimension_count = 32", "part of each head"][..],
        ),
    ] {
        let dir = common::tempdir();
        let p = dir.path().join("m.gguf");
        Spec::default()
            .write_gguf_with(&p, GgmlDType::F32, |meta| {
                meta.push((key.to_string(), GgufValue::U32(value)))
            })
            .unwrap();
        assert_one_line_error(&p, needles);
    }
}

/// A Phi-3 GGUF with LongRoPE's factor tensors (the 128K models) is
/// refused by the tensor's name, never run with plain RoPE.
#[test]
fn phi3_gguf_with_longrope_factors_is_refused() {
    use mwtop::checkpoint::{gguf, Checkpoint};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families/phi3/model.gguf");
    let bytes = std::fs::read(&src).unwrap();
    let header = gguf::parse(&src, &bytes).unwrap();
    let meta: Vec<(String, GgufValue)> = header.metadata.clone().into_iter().collect();
    let mut tensors = gguf_writer::tensors_of(&header, &bytes);
    tensors.push(GgufTensorData {
        name: "rope_factors_long.weight".into(),
        dtype: candle_core::quantized::GgmlDType::F32,
        shape: vec![4],
        data: [1.0f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("longrope.gguf");
    gguf_writer::write(&path, &meta, &tensors).unwrap();
    let err = match Checkpoint::open_path(&path) {
        Ok(_) => panic!("a GGUF with LongRoPE factors opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("rope_factors_long.weight") && err.contains("longrope"),
        "{err}"
    );
    // The control: the file without that tensor opens.
    assert!(Checkpoint::open_path(&src).is_ok());
}

/// Sampling settings that would be ignored or undefined, and a prompt that
/// fills the context, are refused in one line (negative numbers parse with
/// or without `=`, so they get this message and not a usage error).
#[test]
fn bad_sampling_settings_and_an_overlong_prompt_are_refused() {
    let dir = common::tempdir();
    let path = dir.path().join("tiny");
    hf_dir_with_weights(&path, None);
    let m = common::path_str(&path);
    for (args, needle) in [
        (vec!["--top-p", "2"], "--top-p must lie in (0, 1], got 2"),
        (vec!["--top-p", "0"], "--top-p must lie in (0, 1], got 0"),
        (vec!["--top-p", "NaN"], "got NaN"),
        (vec!["--top-p", "-0.5"], "got -0.5"),
        (
            vec!["--temperature", "-1"],
            "--temperature must be a finite number >= 0",
        ),
        (
            vec!["--temperature=-1"],
            "--temperature must be a finite number >= 0",
        ),
        (vec!["--temperature", "NaN"], "got NaN"),
    ] {
        let mut all = vec!["generate", m, "--prompt", "hi"];
        all.extend(args);
        common::assert_one_line_error(&common::mwtop(&all), &[needle]);
    }
    // The position tables hold at least 4096 positions, whatever the config claims.
    let long = "a".repeat(4200);
    common::assert_one_line_error(
        &common::mwtop(&["generate", m, "--prompt", &long]),
        &["the prompt has", "context holds"],
    );
    // Or, when asked, the prompt keeps its last tokens, with a warning.
    let out = common::mwtop(&[
        "generate",
        m,
        "--prompt",
        &long,
        "--max-tokens",
        "5",
        "--truncate-prompt",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("its first 109 tokens were dropped"),
        "{}",
        common::stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    let row = v.get("rows").map_or(&v, |r| &r[0]);
    assert_eq!(row["prompt_tokens"], 4091, "{v}");
}

/// A NaN in a weight is refused when the weight loads, by the tensor's
/// name: eval exits 1 and never prints NaN as a result.
#[test]
fn a_nan_perplexity_is_an_error_not_a_result() {
    let dir = common::tempdir();
    let path = dir.path().join("nan");
    hf_dir_with_weights(&path, None);
    let file = path.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let start = header["model.norm.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let at = 8 + header_len + start;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "some text to score").unwrap();
    let out = common::mwtop(&[
        "eval",
        common::path_str(&path),
        "--text",
        common::path_str(&text),
    ]);
    common::assert_one_line_error(&out, &["model.norm.weight", "NaN or infinite"]);
    assert!(common::stdout(&out).is_empty());
}

/// A window or stride outside what the model and the window can hold is an
/// error naming the option and its range, never clamped in silence.
#[test]
fn eval_window_and_stride_out_of_range() {
    let dir = common::tempdir();
    let path = dir.path().join("m");
    hf_dir_with_weights(&path, None);
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "some text to score, long enough for a few windows").unwrap();
    let (m, t) = (common::path_str(&path), common::path_str(&text));
    for (args, needles) in [
        (
            vec!["--window", "1"],
            vec!["--window", "must hold 2 to", "not 1"],
        ),
        (vec!["--window", "100000"], vec!["--window", "not 100000"]),
        (
            vec!["--window", "8", "--stride", "0"],
            vec!["--stride", "1 to 7", "not 0"],
        ),
        (
            vec!["--window", "8", "--stride", "8"],
            vec!["--stride", "not 8"],
        ),
    ] {
        let mut all = vec!["eval", m, "--text", t];
        all.extend(args);
        common::assert_one_line_error(&common::mwtop(&all), &needles);
    }
    let ok = common::mwtop(&["eval", m, "--text", t, "--window", "8", "--stride", "7"]);
    assert!(ok.status.success(), "{}", common::stderr(&ok));
}

/// Finite weights whose activations overflow the compute dtype (a planted
/// super weight of 60,000, which f16 still holds, times a d_ff state
/// above 1.1 passes f16's largest value, 65,504): the scan
/// refuses to rank infinities instead of reporting them as a result.
#[test]
fn a_scan_that_overflows_its_dtype_is_an_error() {
    let dir = common::tempdir();
    let path = dir.path().join("overflow");
    let mut spec = Spec::planted();
    if let Some(p) = spec.plant.as_mut() {
        p.super_value = 6e4;
    }
    spec.write_hf_dir(&path, safetensors::Dtype::F32).unwrap();
    let m = common::path_str(&path);
    let out = common::mwtop(&["scan", m, "--dtype", "f16", "--device", "cpu"]);
    common::assert_one_line_error(
        &out,
        &["residual stream holds NaN or infinite values", "F16"],
    );
    // In f32 the same model scans.
    let out = common::mwtop(&["scan", m, "--device", "cpu", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
}

/// A reader that goes away (`mwtop ... | head`) ends the output quietly:
/// exit status 0 and nothing on stderr, for a report and for streamed
/// generation, never a panic about a broken pipe.
#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let dir = common::tempdir();
    Spec::planted()
        .write_hf_dir(dir.path(), safetensors::Dtype::F32)
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_mwtop");
    let model = dir.path().display().to_string();
    for args in [
        format!("inspect '{model}' --json"),
        format!("generate '{model}' --prompt Hi --max-tokens 8 --no-stop --device cpu"),
    ] {
        // `true` exits at once; mwtop writes after it is gone.
        let script = format!(
            "set -o pipefail; (sleep 0.5; '{bin}' {args} 2> err.txt) | true; echo $? > status.txt"
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let status = std::fs::read_to_string(dir.path().join("status.txt")).unwrap();
        let err = std::fs::read_to_string(dir.path().join("err.txt")).unwrap();
        assert_eq!(status.trim(), "0", "{args}: {err}");
        assert!(!err.contains("panicked"), "{args}: {err}");
    }
}
