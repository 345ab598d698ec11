//! Fine-tuning on real data and the real model: the instruction data is
//! fetched as `mwtop finetune` fetches it, and SmolLM2 takes a few LoRA +
//! MacDrop updates on it, on the massive rows the scan finds.

use mwtop::analysis::zero_shot::bos_added;
use mwtop::train::data::{self, Record};

use crate::common;

#[test]
fn the_instruction_data_is_fetched_and_reads_as_alpaca_records() {
    let path = data::resolve("alpaca-en-demo")
        .unwrap_or_else(|e| panic!("the instruction data is required: {e}"));
    let records = data::read_records(&path).unwrap();
    assert_eq!(records.len(), 999);
    let with_input = records
        .iter()
        .filter(|r| matches!(r, Record::Instruction { input, .. } if !input.trim().is_empty()))
        .count();
    assert_eq!(with_input, 412);
    let Record::Instruction {
        instruction,
        output,
        ..
    } = &records[0]
    else {
        panic!("an instruction record")
    };
    assert_eq!(instruction, "Describe a process of making crepes.");
    assert!(output.starts_with("Making crepes is an easy and delicious process!"));
    let demo = crate::demo();
    let config = demo.model.config();
    let enc = data::encode(
        &records,
        &demo.tok,
        bos_added(&demo.tok, config.bos_token_id),
        config.eos_token_ids.first().copied(),
        512,
    )
    .unwrap();
    assert_eq!(enc.examples.len() + enc.skipped, 999);
    assert_eq!(enc.skipped, 0);
    // Every example ends with EOS unless it was cut, and the loss starts
    // after the prompt.
    let eos = config.eos_token_ids[0];
    let ended = enc
        .examples
        .iter()
        .filter(|e| e.ids.last() == Some(&eos))
        .count();
    assert_eq!(ended + enc.truncated, enc.examples.len());
    assert!(enc
        .examples
        .iter()
        .all(|e| e.loss_from > 20 && e.counted() > 0));
}

#[test]
fn smollm2_fine_tunes_with_macdrop_on_the_massive_rows() {
    let model = common::demo_model();
    let dir = common::tempdir();
    let out = dir.path().join("macdrop");
    let m = common::path_str(&model);
    let run = common::mwtop(&[
        "finetune",
        m,
        "--data",
        "alpaca-en-demo",
        "--out",
        common::path_str(&out),
        "--steps",
        "2",
        "--batch",
        "1",
        "--grad-accum",
        "2",
        "--max-len",
        "96",
        "--lora-rank",
        "4",
        "--macdrop",
        "--json",
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["updates"], 2);
    assert_eq!(report["macdrop"]["layer"], 11);
    let rows: Vec<u64> = report["macdrop"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_u64().unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    assert_eq!(&rows[..2], &[1229, 1487]);
    let first = report["first_loss"].as_f64().unwrap();
    assert!(first.is_finite() && first > 0.0 && first < 10.0, "{first}");
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog.").unwrap();
    let eval = common::mwtop(&[
        "eval",
        m,
        "--text",
        common::path_str(&text),
        "--adapter",
        common::path_str(&out),
        "--json",
    ]);
    assert!(eval.status.success(), "{}", common::stderr(&eval));
    let ppl: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert!(ppl["perplexity"].as_f64().unwrap().is_finite());
}
