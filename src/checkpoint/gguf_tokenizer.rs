//! A `tokenizers::Tokenizer` built from a GGUF file's own vocabulary
//! (`tokenizer.ggml.*`), so a GGUF checkpoint needs no tokenizer.json.
//!
//! Supported: the GPT-2 style byte-level BPE (`tokenizer.ggml.model = "gpt2"`)
//! with the pre-tokenizers llama.cpp names `smollm`, `gpt2`/`default`,
//! `llama-bpe` (Llama 3) and `qwen2`. The pre-tokenizer matters: SmolLM2 splits
//! digits one by one before the byte-level split, Llama 3 groups up to three.

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::error::{CheckpointError, Result};
use super::gguf::GgufValue;

/// llama.cpp's token types (`enum llama_token_type`).
const TOKEN_TYPE_NORMAL: u64 = 1;
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn strings(meta: &BTreeMap<String, GgufValue>, key: &str) -> Option<Vec<String>> {
    meta.get(key)?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Checks the vocabulary metadata when the checkpoint opens (so `inspect`
/// refuses it too): one token per embedding row, as llama.cpp requires;
/// token types and scores, when present, one per token; merges of two
/// tokens of the vocabulary; BOS and EOS ids inside it.
pub fn check(path: &Path, meta: &BTreeMap<String, GgufValue>, vocab_size: usize) -> Result<()> {
    let err = |m: String| CheckpointError::Tokenizer {
        path: path.to_path_buf(),
        message: m,
    };
    let tokens = strings(meta, "tokenizer.ggml.tokens")
        .ok_or_else(|| err("tokenizer.ggml.tokens must be a list of strings".into()))?;
    if tokens.len() != vocab_size {
        return Err(err(format!(
            "tokenizer.ggml.tokens lists {} tokens, but the vocabulary (the embedding's rows) is {vocab_size}",
            tokens.len()
        )));
    }
    for (key, numeric) in [
        ("tokenizer.ggml.token_type", false),
        ("tokenizer.ggml.scores", true),
    ] {
        let Some(v) = meta.get(key) else { continue };
        let items = v
            .as_array()
            .ok_or_else(|| err(format!("{key} must be a list")))?;
        if items.len() != tokens.len() {
            return Err(err(format!(
                "{key} has {} entries for {} tokens",
                items.len(),
                tokens.len()
            )));
        }
        let ok = |x: &GgufValue| {
            if numeric {
                x.as_f64().is_some_and(f64::is_finite) && x.as_str().is_none()
            } else {
                x.as_u64().is_some()
            }
        };
        if let Some(i) = items.iter().position(|x| !ok(x)) {
            return Err(err(format!(
                "{key}[{i}] is not {}",
                if numeric {
                    "a finite number"
                } else {
                    "a token type (an integer)"
                }
            )));
        }
    }
    if let Some(v) = meta.get("tokenizer.ggml.merges") {
        let merges = v
            .as_array()
            .and_then(|a| a.iter().map(GgufValue::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| err("tokenizer.ggml.merges must be a list of strings".into()))?;
        let known: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        for (i, m) in merges.iter().enumerate() {
            let ok = m
                .split_once(' ')
                .is_some_and(|(a, b)| known.contains(a) && known.contains(b));
            if !ok {
                return Err(err(format!(
                    "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens of the vocabulary separated by a space"
                )));
            }
            // What the merge makes must be a token too (the BPE builder
            // assumes it and indexes past its buffer otherwise).
            let made = m.replacen(' ', "", 1);
            if !known.contains(made.as_str()) {
                return Err(err(format!(
                    "tokenizer.ggml.merges[{i}] = {m:?} makes {made:?}, which is not in the vocabulary"
                )));
            }
        }
    }
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        if let Some(id) = meta.get(key).and_then(GgufValue::as_u64) {
            if id as usize >= tokens.len() {
                return Err(err(format!(
                    "{key} = {id} is outside the vocabulary of {} tokens",
                    tokens.len()
                )));
            }
        }
    }
    Ok(())
}

/// Builds the tokenizer described by GGUF metadata.
pub fn build(path: &Path, meta: &BTreeMap<String, GgufValue>) -> Result<Tokenizer> {
    let err = |m: String| CheckpointError::Tokenizer {
        path: path.to_path_buf(),
        message: m,
    };
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| err("no tokenizer.ggml.model in the metadata".into()))?;
    let tokens = strings(meta, "tokenizer.ggml.tokens")
        .ok_or_else(|| err("tokenizer.ggml.tokens missing or not a list of strings".into()))?;
    let types: Vec<u64> = meta
        .get("tokenizer.ggml.token_type")
        .and_then(GgufValue::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let mut tokenizer = match model {
        "gpt2" => byte_level_bpe(meta, &tokens, &err)?,
        "llama" => sentencepiece(meta, &tokens, &types, &err)?,
        other => {
            return Err(err(format!(
                "tokenizer model {other:?} is not supported yet (supported: gpt2 byte-level BPE, llama SentencePiece)"
            )))
        }
    };
    finish(&mut tokenizer, meta, &tokens, &types, &err)?;
    Ok(tokenizer)
}

type ErrFn<'a> = dyn Fn(String) -> CheckpointError + 'a;

/// GGUF's GPT-2 style byte-level BPE: merges as stored, llama.cpp's pre-tokenizer.
fn byte_level_bpe(
    meta: &BTreeMap<String, GgufValue>,
    tokens: &[String],
    err: &ErrFn,
) -> Result<Tokenizer> {
    let merges = strings(meta, "tokenizer.ggml.merges")
        .ok_or_else(|| err("tokenizer.ggml.merges missing or not a list of strings".into()))?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut pairs = Vec::with_capacity(merges.len());
    for m in &merges {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            err(format!(
                "merge {m:?} is not two tokens separated by a space"
            ))
        })?;
        // tokenizers' BPE builder copies a + b into a buffer as long as the
        // longest token before it looks the result up: a merge whose result
        // is longer than every token panics there (found by fuzzing).
        if !vocab.contains_key(&format!("{a}{b}")) {
            return Err(err(format!(
                "merge {m:?} makes {:?}, which is not in the vocabulary",
                format!("{a}{b}")
            )));
        }
        pairs.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .build()
        .map_err(|e| err(format!("BPE: {e}")))?;

    let pre = meta
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "default" => byte_level.into(),
        "llama-bpe" | "llama3" | "qwen2" => {
            let pattern = if pre == "qwen2" { QWEN2_PATTERN } else { LLAMA3_PATTERN };
            let split = Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(format!("pre-tokenizer regex: {e}")))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        other => {
            return Err(err(format!(
                "pre-tokenizer {other:?} is not supported yet (supported: smollm, gpt2, llama-bpe, qwen2)"
            )))
        }
    };

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// llama.cpp's SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`):
/// spaces become U+2581, then adjacent pieces merge while their
/// concatenation is a token, the highest-scoring first (the leftmost on a
/// tie); a character no token holds becomes its UTF-8 bytes (`<0xXX>`).
/// As a `tokenizers` BPE: every way of splitting a normal token into two
/// tokens is a merge, ranked by the token's score.
fn sentencepiece(
    meta: &BTreeMap<String, GgufValue>,
    tokens: &[String],
    types: &[u64],
    err: &ErrFn,
) -> Result<Tokenizer> {
    let scores: Vec<f32> = meta
        .get("tokenizer.ggml.scores")
        .and_then(GgufValue::as_array)
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect())
        .ok_or_else(|| {
            err("tokenizer.ggml.scores missing: a SentencePiece vocabulary needs them".into())
        })?;
    if scores.len() != tokens.len() {
        return Err(err(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let normal = |i: usize| types.get(i).is_none_or(|&t| t == TOKEN_TYPE_NORMAL);
    let mut ids: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        // The first of duplicate pieces wins, as in llama.cpp's token_to_id.
        ids.entry(t.as_str()).or_insert(i);
    }
    let mut ranked: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !normal(i) || t.chars().nth(1).is_none() {
            continue;
        }
        for (at, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(at);
            if let (Some(&x), Some(&y)) = (ids.get(a), ids.get(b)) {
                if normal(x) && normal(y) {
                    ranked.push((scores[i], i, x, y));
                }
            }
        }
    }
    // Highest score first; a fixed order among equals.
    ranked.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)).then(p.2.cmp(&q.2)));
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, _, x, y)| (tokens[x].clone(), tokens[y].clone()))
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(unk) = meta
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(GgufValue::as_u64)
        .and_then(|u| tokens.get(u as usize))
    {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(|e| err(format!("BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space = |e: tokenizers::Error| err(format!("normalizer: {e}"));
    let escape = Replace::new(" ", "\u{2581}").map_err(space)?;
    // llama.cpp's default for SentencePiece is a leading space; Gemma turns it off.
    let prefix = meta
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(GgufValue::as_bool)
        .unwrap_or(true);
    let normalizer: NormalizerWrapper = if prefix {
        NormalizerSequence::new(vec![Prepend::new("\u{2581}".into()).into(), escape.into()]).into()
    } else {
        escape.into()
    };
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| err(format!("normalizer: {e}")))?;
    let unescape = Replace::new("\u{2581}", " ").map_err(space)?;
    let mut steps: Vec<DecoderWrapper> = vec![
        unescape.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(steps)));
    Ok(tokenizer)
}

/// Control and user-defined tokens match as whole strings in any text; BOS
/// first when the vocabulary asks for it.
fn finish(
    tokenizer: &mut Tokenizer,
    meta: &BTreeMap<String, GgufValue>,
    tokens: &[String],
    types: &[u64],
    err: &ErrFn,
) -> Result<()> {
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, &t)| AddedToken::from(tok.clone(), t == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| err(format!("special tokens: {e}")))?;

    let add_bos = meta
        .get("tokenizer.ggml.add_bos_token")
        .and_then(GgufValue::as_bool)
        .unwrap_or(false);
    let bos = meta
        .get("tokenizer.ggml.bos_token_id")
        .and_then(GgufValue::as_u64);
    if let (true, Some(bos)) = (add_bos, bos) {
        let bos_text = tokens
            .get(bos as usize)
            .ok_or_else(|| err(format!("bos_token_id {bos} is outside the vocabulary")))?
            .clone();
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos_text} $A"))
            .and_then(|b| b.try_pair(format!("{bos_text} $A {bos_text} $B")))
            .map_err(|e| err(format!("post-processor: {e}")))?
            .special_tokens(vec![(bos_text, bos as u32)])
            .build()
            .map_err(|e| err(format!("post-processor: {e}")))?;
        tokenizer.with_post_processor(Some(post));
    }
    Ok(())
}
