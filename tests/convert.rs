//! `mwtop convert`: GGUF -> Hugging Face directory, round-tripped tensor by tensor.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use mwtop::synthetic::Spec;

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
        common::assert_round_trip(&gguf, &out, dtype);
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
    common::assert_round_trip(&gguf, &empty, DType::F32);
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
