//! Hugging Face directories: config.json, tokenizer.json and one
//! model.safetensors or the shards named by model.safetensors.index.json.

use std::collections::BTreeSet;
use std::path::Path;

use safetensors::tensor::SafeTensors;
use safetensors::Dtype;

use super::config::ModelConfig;
use super::error::{CheckpointError, Result};
use super::names::Transform;
use super::{files, Checkpoint, Format, MappedFile, StoredDType, TensorInfo, TokenizerSource};

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// An index's weight_map: (tensor, shard file) in file order, and the
/// shard file names in first-seen order.
type WeightMap = (Vec<(String, String)>, Vec<String>);

/// Shard file names listed by an index's weight_map, in first-seen order.
fn shards_from_index(path: &Path) -> Result<WeightMap> {
    let text = files::read_text(path, files::JSON_LIMIT, "a JSON file")?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::malformed(path, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CheckpointError::malformed(path, "no weight_map object"))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut entries = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            CheckpointError::malformed(
                path,
                format!("weight_map entry {tensor} is not a file name"),
            )
        })?;
        if file.is_empty() || file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(CheckpointError::malformed(
                path,
                format!(
                    "weight_map names {file:?} for {tensor}, which is not a file in this directory"
                ),
            ));
        }
        if seen.insert(file.to_string()) {
            out.push(file.to_string());
        }
        entries.push((tensor.clone(), file.to_string()));
    }
    if out.is_empty() {
        return Err(CheckpointError::malformed(path, "weight_map is empty"));
    }
    Ok((entries, out))
}

/// Bytes per element of a safetensors dtype, for the dtypes whose size is
/// whole bytes (None: left to the safetensors crate).
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// The header checked before the safetensors crate reads it, so that a
/// broken one is named by the tensor at fault: the header length within
/// the file, a JSON object, and each tensor's shape (without overflow)
/// holding exactly the bytes its offsets give, inside the file.
fn check_header(path: &Path, map: &[u8]) -> Result<()> {
    let bad =
        |m: String| CheckpointError::malformed(path, format!("not a valid safetensors file: {m}"));
    if map.len() < 8 {
        return Err(bad(format!(
            "{} bytes, too short for the header length",
            map.len()
        )));
    }
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    let room = map.len() as u64 - 8;
    if n > room {
        return Err(bad(format!(
            "the header length {n} runs past the end of the file ({} bytes)",
            map.len()
        )));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&map[8..8 + n as usize])
            .map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
    let data_len = room - n;
    for (name, v) in &header {
        if name == "__metadata__" {
            continue;
        }
        let tbad = |m: String| bad(format!("tensor {name}: {m}"));
        let dtype = v
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| tbad("no dtype".into()))?;
        let shape: Vec<u64> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect::<Option<_>>())
            .ok_or_else(|| tbad("shape must be a list of non-negative integers".into()))?;
        let offsets: Vec<u64> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect::<Option<_>>())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| tbad("data_offsets must be two non-negative integers".into()))?;
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end {
            return Err(tbad(format!(
                "data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if end > data_len {
            return Err(tbad(format!(
                "data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes)"
            )));
        }
        let Some(size) = dtype_size(dtype) else {
            continue;
        };
        let bytes = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| tbad(format!("shape {shape:?} overflows")))?;
        if bytes != end - begin {
            return Err(tbad(format!(
                "shape {shape:?} of {dtype} needs {bytes} bytes, but data_offsets [{begin}, {end}] hold {}",
                end - begin
            )));
        }
    }
    Ok(())
}

fn supported(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

pub(super) fn open(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    if !files::present(&config_path) {
        return Err(CheckpointError::malformed(
            dir,
            "no config.json here: not a Hugging Face model directory (or pass a .gguf file)",
        ));
    }
    let text = files::read_text(&config_path, files::JSON_LIMIT, "a JSON file")?;
    let config = ModelConfig::from_hf_json(&config_path, &text)?;

    let index_path = dir.join(INDEX);
    let (weight_map, shard_names) = if files::present(&index_path) {
        let (map, shards) = shards_from_index(&index_path)?;
        (Some(map), shards)
    } else if files::present(&dir.join(SINGLE)) {
        (None, vec![SINGLE.to_string()])
    } else {
        return Err(CheckpointError::malformed(
            dir,
            format!("neither {SINGLE} nor {INDEX} is here"),
        ));
    };

    let mut files = Vec::with_capacity(shard_names.len());
    let mut tensors = Vec::new();
    for (file_index, shard) in shard_names.iter().enumerate() {
        let path = dir.join(shard);
        let file = MappedFile::open(&path)?;
        check_header(&path, &file.map)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&file.map).map_err(|e| {
            CheckpointError::malformed(&path, format!("not a valid safetensors file: {e}"))
        })?;
        let data_start = 8 + header_len as u64;
        let mut entries: Vec<_> = metadata.tensors().into_iter().collect();
        entries.sort_by_key(|(_, info)| info.data_offsets.0);
        for (name, info) in entries {
            if !supported(info.dtype) {
                return Err(CheckpointError::unsupported(
                    &path,
                    format!(
                        "tensor {name} has dtype {:?} (supported: F32, F16, BF16)",
                        info.dtype
                    ),
                ));
            }
            let (begin, end) = info.data_offsets;
            tensors.push(TensorInfo {
                stored_name: name.clone(),
                name,
                dtype: StoredDType::Safetensors(info.dtype),
                shape: info.shape.clone(),
                bytes: (end - begin) as u64,
                offset: data_start + begin as u64,
                file: path.clone(),
                file_index,
                transform: Transform::None,
            });
        }
        files.push(file);
    }
    if let Some(map) = &weight_map {
        for (tensor, shard) in map {
            let held = tensors
                .iter()
                .any(|t| &t.name == tensor && t.file.file_name() == Some(shard.as_ref()));
            if !held {
                return Err(CheckpointError::inconsistent(
                    &index_path,
                    format!("weight_map puts {tensor} in {shard}, which does not hold it"),
                ));
            }
        }
    }
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if files::present(&tokenizer_path) {
        TokenizerSource::File(tokenizer_path)
    } else {
        TokenizerSource::Missing
    };
    Checkpoint::assemble(
        dir,
        Format::Safetensors,
        config,
        tensors,
        files,
        tokenizer,
        None,
    )
}
