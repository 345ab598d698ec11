//! Zero-shot scoring: left-padded batches and branched rows (a shared
//! prefix, one branch per choice) equal rows run alone, so batching
//! changes no log-likelihood; acc, acc_norm and their standard errors follow
//! lm-evaluation-harness's definitions; the `tasks` subcommand reads
//! request files and refuses bad ones in one line.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use mwtop::analysis::zero_shot::{self, Budget, Encoded};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::intervention::{Interventions, MaskMode};
use mwtop::model::{Model, RunOptions};
use mwtop::tasks::{Choice, Question};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/families/{family}"))
}

fn question(doc_id: u64, label: usize, choices: &[(&str, &str)]) -> Question {
    Question {
        doc_id,
        label,
        choices: choices
            .iter()
            .map(|(c, k)| Choice {
                context: c.to_string(),
                continuation: k.to_string(),
            })
            .collect(),
    }
}

/// Shared contexts (ARC-like), shared continuations after different
/// contexts (WinoGrande-like), a context with a trailing space, choices
/// that share their first tokens, contexts longer than the sliding window.
fn questions() -> Vec<Question> {
    vec![
        question(0, 1, &[("Question: which is warm?\nAnswer:", " summer"), ("Question: which is warm?\nAnswer:", " winter"), ("Question: which is warm?\nAnswer:", " a cold lake in the north")]),
        question(1, 0, &[("The fox was faster than the dog, so the fox", " won the race."), ("The fox was faster than the dog, so the dog", " won the race.")]),
        question(2, 1, &[("Is the sky blue? ", "yes"), ("Is the sky blue? ", "no")]),
        question(3, 0, &[("1234 5678", " 9 10 11"), ("1234 5678", " 9 10 12"), ("1234 5678", " 9")]),
        question(4, 1, &[("A much longer context, well past the eight-token sliding window: it goes on and on", " and stops."), ("A much longer context, well past the eight-token sliding window: it goes on and on", " forever and ever, it seems.")]),
    ]
}

fn load(path: &Path) -> (Model, tokenizers::Tokenizer) {
    let ckpt = Checkpoint::open_path(path).unwrap();
    let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
    (model, ckpt.tokenizer().unwrap())
}

/// The log-likelihood of one request by the definition: the fixtures'
/// tokenizer maps each byte to its value, so whole = bytes(context +
/// continuation) and the continuation starts after bytes(context without
/// its trailing spaces); one plain forward of the whole sequence.
fn by_definition(model: &Model, c: &Choice, iv: &Interventions) -> f64 {
    let trimmed = c.context.trim_end_matches(' ');
    let ids: Vec<u32> = format!("{}{}", c.context, c.continuation)
        .bytes()
        .map(u32::from)
        .collect();
    let start = trimmed.len();
    let out = model
        .forward(
            std::slice::from_ref(&ids),
            None,
            &RunOptions {
                interventions: vec![iv.clone()],
                ..Default::default()
            },
        )
        .unwrap();
    let lp = Model::next_token_logprobs(&out.logits.unwrap().get(0).unwrap(), &ids).unwrap();
    lp[start - 1..].iter().map(|&x| x as f64).sum()
}

#[test]
fn shared_prefixes_and_batches_equal_each_request_scored_alone() {
    for family in ["llama", "mistral", "gemma2", "gemma3", "phi3"] {
        let (model, tok) = load(&fixture(family));
        assert_eq!(zero_shot::bos_added(&tok, Some(256)), None, "{family}");
        let qs = questions();
        let enc: Vec<Encoded> = qs
            .iter()
            .map(|q| zero_shot::encode(&tok, None, q, 4096).unwrap())
            .collect();
        // Trailing spaces moved: "Is the sky blue?" + " yes".
        assert_eq!(enc[2].cont_start, vec![16, 16]);
        assert_eq!(enc[2].chars, vec![3, 2]);
        let attack = Interventions::ffn_mask(1, MaskMode::Zero, vec![17, 90]);
        for iv in [Interventions::none(), attack] {
            let want: Vec<Vec<f64>> = qs
                .iter()
                .map(|q| {
                    q.choices
                        .iter()
                        .map(|c| by_definition(&model, c, &iv))
                        .collect()
                })
                .collect();
            for tokens in [1, 64, 100_000] {
                let budget = Budget {
                    tokens,
                    logit_bytes: 1 << 30,
                };
                let mut calls = 0;
                let got =
                    zero_shot::score(&model, &enc, &iv, budget, None, |_, _| calls += 1).unwrap();
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!((g - w).abs() < 1e-4, "{family} budget {tokens}: {g} vs {w}");
                }
                if tokens == 1 {
                    assert_eq!(calls, qs.len(), "one question per batch");
                }
            }
        }
    }
}

fn encoded(label: usize, chars: &[usize]) -> Encoded {
    Encoded {
        doc_id: 0,
        seqs: vec![vec![1, 2]; chars.len()],
        cont_start: vec![1; chars.len()],
        chars: chars.to_vec(),
        label,
    }
}

#[test]
fn acc_and_acc_norm_follow_the_harness() {
    // Q0: raw argmax 0 (right), per char argmax 1 (-2/1 > -1/5? no: -0.2 > -2).
    // Q1: raw argmax 1 (wrong), per char: -6/3 = -2 vs -4/1 = -4: 0 (right).
    // Q2: a tie picks the first (right for acc, label 0).
    // Q3: both wrong.
    let qs = vec![
        encoded(0, &[5, 1]),
        encoded(0, &[3, 1]),
        encoded(0, &[1, 1]),
        encoded(1, &[1, 1]),
    ];
    let scores = vec![
        vec![-1.0, -2.0],
        vec![-6.0, -4.0],
        vec![-3.0, -3.0],
        vec![-1.0, -9.0],
    ];
    let s = zero_shot::task_score("t", &qs, &scores);
    assert_eq!(s.n, 4);
    assert_eq!(s.acc, 0.5); // Q0, Q2
    assert_eq!(s.acc_norm, 0.75); // Q0 (-0.2 vs -2), Q1, Q2
                                  // sample std / sqrt(n) = sqrt(p (1 - p) / (n - 1)).
    assert!((s.acc_stderr.unwrap() - (0.25f64 / 3.0).sqrt()).abs() < 1e-12);
    assert!((s.acc_norm_stderr.unwrap() - (0.1875f64 / 3.0).sqrt()).abs() < 1e-12);
    let other = zero_shot::task_score("u", &qs[..1], &scores[..1]);
    assert_eq!(other.acc_stderr, None, "no standard error of one question");
    let avg = zero_shot::average(&[s.clone(), s]);
    assert_eq!(avg.acc, 0.5);
    assert_eq!(avg.n, 8);
}

fn write_requests(dir: &Path, lines: &[serde_json::Value]) -> PathBuf {
    let p = dir.join("mine.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&p, text.join("\n")).unwrap();
    p
}

fn req(task: &str, doc: u64, idx: usize, label: usize, ctx: &str, cont: &str) -> serde_json::Value {
    serde_json::json!({"task_name": task, "doc_id": doc, "idx": idx, "label": label,
                       "request": {"context": ctx, "continuation": cont}})
}

/// One request line per choice of `qs`, in the task `task_of(doc_id)`.
fn request_lines(qs: &[Question], task_of: impl Fn(u64) -> &'static str) -> Vec<serde_json::Value> {
    qs.iter()
        .flat_map(|q| {
            let task = task_of(q.doc_id);
            q.choices
                .iter()
                .enumerate()
                .map(move |(i, c)| req(task, q.doc_id, i, q.label, &c.context, &c.continuation))
        })
        .collect()
}

#[test]
fn the_tasks_command_scores_request_files_and_refuses_bad_input() {
    let dir = common::tempdir();
    let lines = request_lines(&questions(), |doc| if doc < 3 { "one" } else { "two" });
    let file = write_requests(dir.path(), &lines);
    let model = fixture("llama");
    let m = common::path_str(&model);
    let f = common::path_str(&file);
    let out = common::mwtop(&[
        "tasks",
        m,
        "--requests",
        f,
        "--device",
        "cpu",
        "--json",
        "--per-request",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(
        (tasks[0]["task"].as_str(), tasks[0]["n"].as_u64()),
        (Some("one"), Some(3))
    );
    assert_eq!(tasks[1]["n"].as_u64(), Some(2));
    assert_eq!(tasks[0]["requests"].as_array().unwrap().len(), 7);
    assert!(v["attack"].is_null());
    assert_eq!(v["average"]["n"].as_u64(), Some(5));
    // The per-request scores are the library's (and so the definition's).
    let (model_l, _) = load(&model);
    let want = by_definition(&model_l, &questions()[0].choices[1], &Interventions::none());
    let got = tasks[0]["requests"][1]["loglik"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    // Under an attack the report says which.
    let out = common::mwtop(&[
        "tasks",
        m,
        "--requests",
        f,
        "--device",
        "cpu",
        "--json",
        "--mode",
        "zero",
        "--layer",
        "1",
        "--dims",
        "17,90",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["attack"]["dims"], serde_json::json!([17, 90]));
    assert_eq!(v["attack"]["layer"], 1);
    // Bad input: one line, exit 1.
    let out = common::mwtop(&["tasks", m, "--tasks", "arc_easy,mmlu", "--device", "cpu"]);
    common::assert_one_line_error(&out, &["mmlu", "arc_easy"]);
    let bad = write_requests(
        dir.path(),
        &[req("x", 0, 0, 3, "a", " b"), req("x", 0, 1, 3, "a", " c")],
    );
    let out = common::mwtop(&[
        "tasks",
        m,
        "--requests",
        common::path_str(&bad),
        "--device",
        "cpu",
    ]);
    common::assert_one_line_error(&out, &["mine.jsonl", "label 3 of 2"]);
    std::fs::write(&bad, "{not json").unwrap();
    let out = common::mwtop(&[
        "tasks",
        m,
        "--requests",
        common::path_str(&bad),
        "--device",
        "cpu",
    ]);
    common::assert_one_line_error(&out, &["mine.jsonl", "line 1", "not JSON"]);
}

/// `--sweep`: every attack of the paper's table, the original first, each
/// with its average accuracy and the perplexity of the built-in text.
#[test]
fn the_tasks_sweep_runs_every_attack() {
    let dir = common::tempdir();
    let lines = request_lines(&questions()[..3], |_| "t");
    let file = write_requests(dir.path(), &lines);
    let model = fixture("llama");
    let args = [
        "tasks",
        common::path_str(&model),
        "--requests",
        common::path_str(&file),
    ];
    let out = common::mwtop(
        &[
            &args[..],
            &["--sweep", "--layer", "1", "--device", "cpu", "--json"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    // original; zero, random-zero and random-keep at k = 1..32; keep at k = 0..32.
    assert_eq!(runs.len(), 1 + 6 + 7 + 6 + 6);
    assert_eq!(runs[0]["mode"], "original");
    assert_eq!(v["layer"], 1);
    let ranked = v["ranked_dims"].as_array().unwrap();
    let zero1 = runs
        .iter()
        .find(|r| r["mode"] == "zero" && r["k"] == 1)
        .unwrap();
    assert_eq!(zero1["dims"], serde_json::json!([ranked[0]]));
    for r in runs {
        let acc = r["acc"].as_f64().unwrap();
        assert!(
            (acc * 3.0 - (acc * 3.0).round()).abs() < 1e-9,
            "a count of 3: {acc}"
        );
        assert!(r["perplexity"].as_f64().unwrap() > 1.0);
        assert_eq!(r["tasks"][0]["n"], 3);
    }
    // The original row equals a plain run's accuracy.
    let plain = common::mwtop(&[&args[..], &["--device", "cpu", "--json"]].concat());
    let p: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(p["average"]["acc"], runs[0]["acc"]);
}

/// What the harness would compute differently, or not at all, is refused
/// in one line: a request longer than the model's context (the harness cuts
/// its start off), a choice with no text (acc_norm divides by zero), a
/// log-likelihood that is not finite.
#[test]
fn requests_that_cannot_be_scored_exactly_are_refused() {
    let (mut model, tok) = load(&fixture("llama"));
    let long = question(
        0,
        0,
        &[
            ("x".repeat(40).as_str(), " a"),
            ("x".repeat(40).as_str(), " b"),
        ],
    );
    let e = zero_shot::encode(&tok, None, &long, 32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("41 tokens exceed the model's context of 32"),
        "{e}"
    );
    let empty = question(1, 0, &[("Q:", " "), ("Q:", " b")]);
    let e = zero_shot::encode(&tok, None, &empty, 4096)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty text"), "{e}");
    // A NaN in the embedding of 'Q' (byte 81) reaches every choice.
    let q = question(2, 0, &[("Q:", " a"), ("Q:", " b")]);
    let enc = zero_shot::encode_questions(&model, &tok, std::slice::from_ref(&q)).unwrap();
    let budget = Budget::for_model(&model);
    let fine = zero_shot::score(
        &model,
        &enc,
        &Interventions::none(),
        budget,
        None,
        |_, _| {},
    );
    assert!(fine.is_ok());
    model
        .set_weight_entry(mwtop::checkpoint::WeightId::Embed, 81, 0, f32::NAN)
        .unwrap();
    let e = zero_shot::score(
        &model,
        &enc,
        &Interventions::none(),
        budget,
        None,
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not finite"), "{e}");
}

/// Rows of different lengths in one batch, left padding hidden by
/// `key_padding`: every real position's logits equal the row run alone
/// (sliding windows and soft caps included).
#[test]
fn left_padded_batches_equal_rows_run_alone() {
    for family in ["llama", "mistral", "gemma2", "phi3"] {
        let (mut model, _) = load(&fixture(family));
        // BOS, then the fixtures' byte-level ids of a text.
        let text = "The quick brown fox jumps over the lazy dog. Summer is warm.";
        let ids: Vec<u32> = std::iter::once(256)
            .chain(text.bytes().map(u32::from))
            .collect();
        let a: Vec<u32> = ids[..20].to_vec();
        let b: Vec<u32> = ids[30..43].to_vec();
        let alone = |s: &[u32]| {
            model
                .forward(&[s.to_vec()], None, &RunOptions::default())
                .unwrap()
                .logits
                .unwrap()
                .get(0)
                .unwrap()
        };
        let (la, lb) = (alone(&a), alone(&b));
        // The same batches again with attention in tiles of one query (a
        // budget of 1 byte), whose masks are built on the device.
        for budget in [mwtop::model::ATTENTION_BUDGET_CPU, 1] {
            model.set_attention_budget(budget);
            // One-query tiles take the matrix-vector path: last-bit rounding
            // differences, nothing more (a wrong mask costs whole units).
            let tol = if budget == 1 { 1e-4 } else { 1e-5 };
            let diff = |x: &candle_core::Tensor, y: &candle_core::Tensor| max_abs_diff(x, y);
            // One batch, b left-padded by 7.
            let padded: Vec<u32> = [vec![0; 7], b.clone()].concat();
            let out = model
                .forward(
                    &[a.clone(), padded],
                    None,
                    &RunOptions {
                        key_padding: Some(vec![0, 7]),
                        ..Default::default()
                    },
                )
                .unwrap()
                .logits
                .unwrap();
            assert!(
                diff(&out.get(0).unwrap(), &la) < tol,
                "{family} {budget}: {}",
                diff(&out.get(0).unwrap(), &la)
            );
            let got_b = out.get(1).unwrap().narrow(0, 7, 13).unwrap();
            assert!(diff(&got_b, &lb) < tol, "{family}: {}", diff(&got_b, &lb));
        }
    }
}

/// A branched row (a prefix, then two branches and right padding, see
/// `model::branches`) gives every real token the logits of its own
/// sequence run alone, for every family (sliding windows counted in the
/// branch's own positions, Gemma 3's local RoPE, Phi-3's partial rotary),
/// with attention whole and in tiles of one query.
#[test]
fn branched_rows_equal_each_branch_run_alone() {
    let families = [
        "llama",
        "mistral",
        "qwen2_swa",
        "qwen3",
        "phi3",
        "olmo2",
        "gemma2",
        "gemma3",
    ];
    for family in families {
        let (mut model, _) = load(&fixture(family));
        let text = "The quick brown fox jumps over the lazy dog. Summer is warm.";
        let ids: Vec<u32> = std::iter::once(256)
            .chain(text.bytes().map(u32::from))
            .collect();
        let prefix = &ids[..10];
        let first = &ids[10..20];
        let second = &ids[40..48];
        let alone = |s: Vec<u32>| {
            model
                .forward(&[s], None, &RunOptions::default())
                .unwrap()
                .logits
                .unwrap()
                .get(0)
                .unwrap()
        };
        let la = alone([prefix, first].concat());
        let lb = alone([prefix, second].concat());
        let row: Vec<u32> = [prefix, first, second, &[0, 0, 0]].concat();
        let mut positions: Vec<u32> = (0..20).collect();
        positions.extend(10..18);
        positions.extend([0, 0, 0]);
        let mut segments = vec![0u32; 10];
        segments.extend([1; 10]);
        segments.extend([2; 8]);
        segments.extend([u32::MAX; 3]);
        for budget in [mwtop::model::ATTENTION_BUDGET_CPU, 1] {
            model.set_attention_budget(budget);
            let out = model
                .forward(
                    std::slice::from_ref(&row),
                    None,
                    &RunOptions {
                        branches: Some(mwtop::model::Branches {
                            positions: positions.clone(),
                            segments: segments.clone(),
                        }),
                        ..Default::default()
                    },
                )
                .unwrap()
                .logits
                .unwrap()
                .get(0)
                .unwrap();
            let tol = if budget == 1 { 1e-4 } else { 1e-5 };
            let n = |t: &candle_core::Tensor, a, l| t.narrow(0, a, l).unwrap();
            let d = [
                max_abs_diff(&n(&out, 0, 20), &n(&la, 0, 20)),
                max_abs_diff(&n(&out, 20, 8), &n(&lb, 10, 8)),
            ];
            assert!(
                d.iter().all(|&d| d < tol),
                "{family} budget {budget}: {d:?}"
            );
        }
    }
}

/// The largest |x - y| over two tensors of one shape.
fn max_abs_diff(x: &candle_core::Tensor, y: &candle_core::Tensor) -> f32 {
    (x - y)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}
