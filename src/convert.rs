//! `mwtop convert`: a GGUF checkpoint -> a Hugging Face directory that mwtop,
//! transformers and other Hugging Face tools open.
//!
//! Everything is written into a hidden temporary directory beside the target
//! and renamed into place at the end, so an interrupted run leaves nothing
//! half-written under the name the user asked for. Tensors are dequantized one
//! at a time while the safetensors file is written, so memory stays at about
//! one tensor whatever the model size.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device};
use safetensors::tensor::View;
use serde_json::json;

use crate::checkpoint::{Checkpoint, CheckpointError, Format};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: already exists and is not empty; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("{0}: convert reads GGUF files; this checkpoint is already a Hugging Face directory")]
    NotGguf(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{}: writing safetensors: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
}

/// What a conversion wrote.
#[derive(Debug, serde::Serialize)]
pub struct ConvertReport {
    pub out_dir: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    pub dtype: String,
}

/// A tensor that is dequantized only when the writer asks for its bytes.
struct LazyTensor<'a> {
    ckpt: &'a Checkpoint,
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    failure: &'a Mutex<Option<CheckpointError>>,
}

fn st_dtype(dtype: DType) -> safetensors::Dtype {
    match dtype {
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        _ => safetensors::Dtype::F32,
    }
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        st_dtype(self.dtype)
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = self
            .ckpt
            .tensor(&self.name, self.dtype, &Device::Cpu)
            .and_then(|t| {
                tensor_bytes(&t, self.dtype).map_err(|source| CheckpointError::Candle {
                    path: self.ckpt.source().to_path_buf(),
                    name: self.name.clone(),
                    source: Box::new(source),
                })
            });
        match bytes {
            Ok(b) => Cow::Owned(b),
            Err(e) => {
                // View::data cannot fail: remember the error, write filler, and
                // let the caller discard the temporary file.
                self.failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                Cow::Owned(vec![0u8; self.data_len()])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

fn tensor_bytes(t: &candle_core::Tensor, dtype: DType) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match dtype {
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<(), ConvertError> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(&path, text + "\n").map_err(|source| ConvertError::Io { path, source })
}

/// Converts `ckpt` (a GGUF checkpoint) into a Hugging Face directory `out`.
pub fn convert(ckpt: &Checkpoint, out: &Path, dtype: DType) -> Result<ConvertReport, ConvertError> {
    if ckpt.format() != Format::Gguf {
        return Err(ConvertError::NotGguf(ckpt.source().display().to_string()));
    }
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            return Err(ConvertError::Exists(out.to_path_buf()));
        }
    } else if out.exists() {
        return Err(ConvertError::Exists(out.to_path_buf()));
    }
    let tmp = crate::checkpoint::temp_sibling(out);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| ConvertError::Io {
        path: tmp.clone(),
        source,
    })?;
    let result = write_all(ckpt, &tmp, dtype).and_then(|report| {
        // rename(2) replaces an empty directory, which is what we checked for.
        std::fs::rename(&tmp, out).map_err(|source| ConvertError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        Ok(ConvertReport {
            out_dir: out.to_path_buf(),
            ..report
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_all(ckpt: &Checkpoint, dir: &Path, dtype: DType) -> Result<ConvertReport, ConvertError> {
    let cfg = ckpt.config();
    let dtype_name = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    write_json(dir, "config.json", &cfg.to_hf_json(dtype_name))?;

    let mut generation = json!({});
    if let Some(bos) = cfg.bos_token_id {
        generation["bos_token_id"] = bos.into();
    }
    if !cfg.eos_token_ids.is_empty() {
        generation["eos_token_id"] = match cfg.eos_token_ids.as_slice() {
            [one] => (*one).into(),
            many => many.to_vec().into(),
        };
    }
    write_json(dir, "generation_config.json", &generation)?;

    let tokenizer = ckpt.tokenizer()?;
    let tok_path = dir.join("tokenizer.json");
    tokenizer
        .save(&tok_path, false)
        .map_err(|e| ConvertError::Io {
            path: tok_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let meta = ckpt.gguf_metadata();
    let meta_id = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
    };
    let mut specials = json!({});
    for (key, id) in [
        ("bos_token", cfg.bos_token_id),
        ("eos_token", cfg.eos_token_ids.first().copied()),
        ("unk_token", meta_id("tokenizer.ggml.unknown_token_id")),
        ("pad_token", meta_id("tokenizer.ggml.padding_token_id")),
    ] {
        if let Some(text) = token_text(id) {
            specials[key] = text.into();
        }
    }
    write_json(dir, "special_tokens_map.json", &specials)?;
    let mut tok_config = specials.clone();
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    tok_config["model_max_length"] = cfg.max_position_embeddings.into();
    tok_config["add_bos_token"] = meta
        .and_then(|m| m.get("tokenizer.ggml.add_bos_token"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
        .into();
    if let Some(template) = ckpt.chat_template() {
        tok_config["chat_template"] = template.into();
    }
    write_json(dir, "tokenizer_config.json", &tok_config)?;

    let failure = Mutex::new(None);
    let views: Vec<(String, LazyTensor)> = ckpt
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                LazyTensor {
                    ckpt,
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    dtype,
                    failure: &failure,
                },
            )
        })
        .collect();
    let n = views.len();
    let bytes: u64 = views.iter().map(|(_, v)| v.data_len() as u64).sum();
    let st_path = dir.join("model.safetensors");
    let mut info = std::collections::HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    info.insert(
        "converted_by".to_string(),
        format!("mwtop {}", env!("CARGO_PKG_VERSION")),
    );
    tracing::info!(tensors = n, bytes, "writing {}", st_path.display());
    safetensors::serialize_to_file(views, Some(info), &st_path).map_err(|e| {
        ConvertError::Safetensors {
            path: st_path.clone(),
            message: e.to_string(),
        }
    })?;
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.into());
    }
    Ok(ConvertReport {
        out_dir: dir.to_path_buf(),
        tensors: n,
        bytes,
        dtype: dtype_name.to_string(),
    })
}
