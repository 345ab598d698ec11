//! The demo model through `mwtop convert` and back: every tensor of the
//! converted directory equals the dequantized GGUF tensor.

use candle_core::DType;

use crate::common;

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
    common::assert_round_trip(&gguf, &out, DType::F32);
}
