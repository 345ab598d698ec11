//! Hugging Face directories: config.json, tokenizer.json and one
//! model.safetensors or the shards named by model.safetensors.index.json.

use std::collections::BTreeSet;
use std::path::Path;

use safetensors::tensor::SafeTensors;
use safetensors::Dtype;

use super::config::ModelConfig;
use super::error::{CheckpointError, Result};
use super::names::Transform;
use super::{Checkpoint, Format, MappedFile, StoredDType, TensorInfo, TokenizerSource};

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// Shard file names listed by an index's weight_map, in first-seen order.
fn shards_from_index(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::malformed(path, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CheckpointError::malformed(path, "no weight_map object"))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            CheckpointError::malformed(
                path,
                format!("weight_map entry {tensor} is not a file name"),
            )
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(CheckpointError::malformed(
                path,
                format!("weight_map names {file:?}, which is not a file in this directory"),
            ));
        }
        if seen.insert(file.to_string()) {
            out.push(file.to_string());
        }
    }
    if out.is_empty() {
        return Err(CheckpointError::malformed(path, "weight_map is empty"));
    }
    Ok(out)
}

fn supported(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

pub(super) fn open(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let text = match std::fs::read_to_string(&config_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::malformed(
                dir,
                "no config.json here: not a Hugging Face model directory (or pass a .gguf file)",
            ))
        }
        Err(e) => return Err(CheckpointError::io(&config_path, e)),
    };
    let config = ModelConfig::from_hf_json(&config_path, &text)?;

    let index_path = dir.join(INDEX);
    let shard_names = if index_path.exists() {
        shards_from_index(&index_path)?
    } else if dir.join(SINGLE).exists() {
        vec![SINGLE.to_string()]
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
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.exists() {
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
