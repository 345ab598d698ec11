//! `mwtop convert`: GGUF -> Hugging Face directory, round-tripped tensor by tensor.

mod common;

use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use mwtop::checkpoint::{Checkpoint, Format};
use mwtop::synthetic::Spec;

fn assert_round_trip(gguf: &Path, out: &Path, dtype: DType) {
    let a = Checkpoint::open_path(gguf).unwrap();
    let b = Checkpoint::open_path(out).unwrap();
    assert_eq!(b.format(), Format::Safetensors);
    assert_eq!(a.config(), b.config());
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in a.tensors() {
        let x = a
            .tensor(&t.name, dtype, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let y = b.tensor(&t.name, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), y.dims(), "{}", t.name);
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x == y, "{} differs after conversion", t.name);
    }
    let text = "<|im_start|>The 3 cafés—naïve 東京<|im_end|>";
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
    assert_eq!(a.chat_template(), b.chat_template());
}

#[test]
fn synthetic_k_quant_round_trips_in_every_dtype() {
    let dir = common::tempdir();
    let gguf = dir.path().join("m.gguf");
    Spec::default().write_gguf(&gguf, GgmlDType::Q4K).unwrap();
    for (flag, dtype) in [
        ("f32", DType::F32),
        ("f16", DType::F16),
        ("bf16", DType::BF16),
    ] {
        let out = dir.path().join(format!("hf-{flag}"));
        let run = common::mwtop(&[
            "convert",
            common::path_str(&gguf),
            common::path_str(&out),
            "--dtype",
            flag,
        ]);
        assert!(run.status.success(), "{}", common::stderr(&run));
        assert!(common::stdout(&run).contains("20 tensors"));
        assert_round_trip(&gguf, &out, dtype);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
        assert_eq!(cfg["intermediate_size"], 512);
        let special: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("special_tokens_map.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(special["bos_token"], "<|endoftext|>");
        assert_eq!(special["eos_token"], "<|im_end|>");
        let generation: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("generation_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(generation["eos_token_id"], 258);
    }
    // Nothing but the gguf and the three outputs: no temporary leftovers.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["hf-bf16", "hf-f16", "hf-f32", "m.gguf"]);
}

#[test]
fn convert_refuses_to_overwrite_and_accepts_an_empty_directory() {
    let dir = common::tempdir();
    let gguf = dir.path().join("m.gguf");
    Spec::default().write_gguf(&gguf, GgmlDType::Q8_0).unwrap();
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "user data").unwrap();
    let run = common::mwtop(&["convert", common::path_str(&gguf), common::path_str(&busy)]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        common::stderr(&run).contains("refusing to overwrite"),
        "{}",
        common::stderr(&run)
    );
    assert_eq!(
        std::fs::read_to_string(busy.join("keep.txt")).unwrap(),
        "user data"
    );
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let run = common::mwtop(&["convert", common::path_str(&gguf), common::path_str(&file)]);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let run = common::mwtop(&["convert", common::path_str(&gguf), common::path_str(&empty)]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    assert_round_trip(&gguf, &empty, DType::F32);
}

#[test]
fn convert_wants_a_gguf() {
    let dir = common::tempdir();
    let hf = dir.path().join("hf");
    Spec::default()
        .write_hf_dir(&hf, safetensors::Dtype::F32)
        .unwrap();
    let run = common::mwtop(&[
        "convert",
        common::path_str(&hf),
        common::path_str(&dir.path().join("out")),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(common::stderr(&run).contains("convert reads GGUF files"));
    assert!(!dir.path().join("out").exists());
}

/// Every tensor of the converted demo model equals the dequantized GGUF tensor.
#[test]
fn demo_model_round_trips_through_convert() {
    let gguf = common::demo_model();
    let dir = common::tempdir();
    let out = dir.path().join("smollm2-f32");
    let run = common::mwtop(&[
        "convert",
        common::path_str(&gguf),
        common::path_str(&out),
        "--json",
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["tensors"], 272);
    assert_eq!(report["bytes"], 134_515_008u64 * 4);
    assert_round_trip(&gguf, &out, DType::F32);
}
