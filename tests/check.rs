//! `mwtop check`, the pipeline gate: it passes within its limits, fails
//! with exit status 2 and one line when zeroing the massive weights costs
//! more, passes a model without massive activations, and refuses bad limits.

mod common;

use mwtop::synthetic::Spec;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {}",
            out.stdout,
            common::stderr(out)
        )
    })
}

#[test]
fn the_gate_passes_within_its_limits_and_fails_beyond_them() {
    let dir = common::tempdir();
    let path = dir.path().join("planted");
    Spec::planted()
        .write_hf_dir(&path, safetensors::Dtype::F32)
        .unwrap();
    let m = common::path_str(&path);
    let pass = common::mwtop(&["check", m, "--json"]);
    assert_eq!(pass.status.code(), Some(0), "{}", common::stderr(&pass));
    let report = json(&pass);
    assert_eq!(report["passed"], true);
    assert_eq!(report["massive"], true);
    assert_eq!(report["layer"], 1);
    // The planted massive row first.
    assert_eq!(report["dims"][0], 300);
    let ratio = report["perplexity"]["ratio"].as_f64().unwrap();
    assert!(
        ratio > 1.01,
        "zeroing the planted rows changes perplexity: {ratio}"
    );
    let limit = format!("{}", (1.0 + ratio) / 2.0);
    let fail = common::mwtop(&["check", m, "--max-ratio", &limit, "--json"]);
    assert_eq!(fail.status.code(), Some(2), "a failed check exits with 2");
    let err = common::stderr(&fail);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("check failed") && err.contains("raises perplexity"),
        "{err}"
    );
    assert_eq!(json(&fail)["passed"], false);
}

#[test]
fn a_model_without_massive_activations_passes_and_says_so() {
    let dir = common::tempdir();
    let path = dir.path().join("plain");
    Spec::default()
        .write_hf_dir(&path, safetensors::Dtype::F32)
        .unwrap();
    let out = common::mwtop(&["check", common::path_str(&path)]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("pass  no massive activation"), "{text}");
}

#[test]
fn bad_limits_are_refused_in_one_line() {
    let dir = common::tempdir();
    let path = dir.path().join("planted");
    Spec::planted()
        .write_hf_dir(&path, safetensors::Dtype::F32)
        .unwrap();
    let m = common::path_str(&path);
    for (args, needle) in [
        (vec!["check", m, "--max-ratio", "0.5"], "--max-ratio"),
        (vec!["check", m, "--max-ratio", "NaN"], "--max-ratio"),
        (vec!["check", m, "--k", "0"], "--k"),
        (vec!["check", m, "--max-drop", "3"], "--tasks"),
    ] {
        common::assert_one_line_error(&common::mwtop(&args), &[needle]);
    }
}
