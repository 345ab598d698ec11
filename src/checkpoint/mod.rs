//! The checkpoint layer: one read-only view over Hugging Face safetensors
//! directories, GGUF files and hub ids.
//!
//! Opening maps the files and parses headers only; tensor bytes are touched
//! when [`Checkpoint::tensor`] asks for one. Tensors are always presented under
//! canonical Hugging Face names and in Hugging Face layout, whatever the format.

pub mod adapter;
pub mod chat;
pub mod config;
pub mod error;
pub mod files;
pub mod gguf;
mod gguf_config;
pub mod gguf_tokenizer;
pub mod gguf_writer;
pub mod hub;
pub mod layout;
pub mod names;
mod quantized;
mod read;
mod safetensors_dir;
pub mod weight_id;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use memmap2::Mmap;
use serde::Serialize;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::{CheckpointError, Result};
use gguf::GgufValue;
use names::Transform;
pub use quantized::QuantizedRows;
use quantized::{block_scale_offsets, block_scales_finite, unpermute_rope_rows};
pub use read::dequantize_ggml;
pub use weight_id::{Fused, NormId, NormKind, Proj, WeightId};

/// Where a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Safetensors,
    Gguf,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Safetensors => "safetensors",
            Self::Gguf => "gguf",
        })
    }
}

/// How a tensor is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StoredDType {
    Safetensors(safetensors::Dtype),
    Ggml(GgmlDType),
}

impl fmt::Display for StoredDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Safetensors(d) => write!(f, "{d:?}"),
            Self::Ggml(d) => f.write_str(gguf::ggml_dtype_name(*d)),
        }
    }
}

impl Serialize for StoredDType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One tensor of a checkpoint, as its header describes it.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// Canonical Hugging Face name (`model.layers.{i}.mlp.up_proj.weight`).
    pub name: String,
    /// The name in the file.
    pub stored_name: String,
    pub dtype: StoredDType,
    /// Row-major (Hugging Face) shape.
    pub shape: Vec<usize>,
    pub bytes: u64,
    /// Absolute byte offset of the data in its file.
    pub offset: u64,
    /// The file that holds it.
    pub file: PathBuf,
    #[serde(skip)]
    file_index: usize,
    #[serde(skip)]
    transform: Transform,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A read-only memory map of one file of the checkpoint.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let (file, len) = files::open_regular(path)?;
        if len == 0 {
            return Err(CheckpointError::malformed(path, "the file is empty"));
        }
        // SAFETY: the mapping is read-only; mwtop never writes to a checkpoint.
        // Another process truncating the file while it is mapped is outside
        // what any mmap-based reader (safetensors, llama.cpp) can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }
}

/// Where the tokenizer comes from.
enum TokenizerSource {
    File(PathBuf),
    Gguf,
    Missing,
}

/// An opened checkpoint: configuration, tensor table and lazily read tensors.
pub struct Checkpoint {
    source: PathBuf,
    format: Format,
    config: ModelConfig,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    files: Vec<MappedFile>,
    tokenizer: TokenizerSource,
    gguf_metadata: Option<BTreeMap<String, GgufValue>>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("source", &self.source)
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a path (directory or GGUF file) or, if no such path exists and the
    /// text looks like `owner/name`, a Hugging Face hub id.
    pub fn open(spec: &str) -> Result<Self> {
        if spec.trim().is_empty() {
            return Err(CheckpointError::Usage {
                message: format!(
                    "the model {spec:?} is empty: name a Hugging Face directory, a .gguf file or a hub id (owner/name)"
                ),
            });
        }
        let path = Path::new(spec);
        if !files::present(path) && hub::looks_like_hub_id(spec) {
            let dir = hub::resolve(spec)?;
            return Self::open_path(&dir);
        }
        Self::open_path(path)
    }

    /// Opens a Hugging Face directory or a GGUF file.
    pub fn open_path(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| CheckpointError::io(path, e))?;
        if meta.is_dir() {
            safetensors_dir::open(path)
        } else {
            files::regular_file(path)?;
            Self::open_gguf(path)
        }
    }

    fn open_gguf(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let header = gguf::parse(path, &file.map)?;
        let config = gguf_config::gguf_config(path, &header)?;
        let arch = config.architecture;
        let tensors: Vec<TensorInfo> = header
            .tensors
            .iter()
            .map(|t| {
                let name = names::canonical_name(arch, &t.name);
                TensorInfo {
                    transform: names::transform_for(arch, &name, config.n_heads, config.n_kv_heads),
                    name,
                    stored_name: t.name.clone(),
                    dtype: StoredDType::Ggml(t.dtype),
                    shape: t.shape(),
                    bytes: t.bytes,
                    offset: t.offset,
                    file: path.to_path_buf(),
                    file_index: 0,
                }
            })
            .collect();
        let has_vocab = header.metadata.contains_key("tokenizer.ggml.tokens");
        let vocab_size = config.vocab_size;
        let ckpt = Self::assemble(
            path,
            Format::Gguf,
            config,
            tensors,
            vec![file],
            if has_vocab {
                TokenizerSource::Gguf
            } else {
                TokenizerSource::Missing
            },
            Some(header.metadata),
        )?;
        if let (true, Some(meta)) = (has_vocab, &ckpt.gguf_metadata) {
            gguf_tokenizer::check(path, meta, vocab_size)?;
        }
        Ok(ckpt)
    }

    /// Indexes the tensors and checks them against the configuration.
    fn assemble(
        source: &Path,
        format: Format,
        config: ModelConfig,
        tensors: Vec<TensorInfo>,
        files: Vec<MappedFile>,
        tokenizer: TokenizerSource,
        gguf_metadata: Option<BTreeMap<String, GgufValue>>,
    ) -> Result<Self> {
        let cfg_path = match format {
            Format::Safetensors => source.join("config.json"),
            Format::Gguf => source.to_path_buf(),
        };
        let arch_name = gguf_metadata
            .as_ref()
            .and_then(|m| m.get("general.architecture"))
            .and_then(GgufValue::as_str)
            .unwrap_or(config.architecture.name());
        let keys = match format {
            Format::Safetensors => config::Keys::Hf,
            Format::Gguf => config::Keys::Gguf(arch_name),
        };
        config
            .check_fits(
                keys,
                tensors
                    .iter()
                    .map(|t| (t.name.as_str(), t.stored_name.as_str(), t.shape.as_slice())),
            )
            .map_err(|m| CheckpointError::inconsistent(&cfg_path, m))?;
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(CheckpointError::malformed(
                    &t.file,
                    format!("two tensors map to the name {}", t.name),
                ));
            }
        }
        let ckpt = Self {
            source: source.to_path_buf(),
            format,
            config,
            tensors,
            index,
            files,
            tokenizer,
            gguf_metadata,
        };
        ckpt.check_shapes()?;
        Ok(ckpt)
    }

    /// A tensor as messages name it: its canonical name, and the name in
    /// the file when that differs (`blk.0.attn_q.weight`).
    fn shown_name(&self, name: &str) -> String {
        let stored = match self.info(name) {
            Some(t) => t.stored_name.clone(),
            None if self.format == Format::Gguf => names::gguf_name(self.config.architecture, name),
            None => name.to_string(),
        };
        if stored == name {
            name.to_string()
        } else {
            format!("{stored} ({name})")
        }
    }

    /// The configuration and the tensor shapes must tell the same story:
    /// every tensor the configuration implies is there with its shape, and
    /// every tensor there is one the model reads (the implied ones, biases
    /// of their matrices, a stored output head, RoPE factors) or one
    /// transformers ignores too (`rotary_emb.inv_freq`).
    fn check_shapes(&self) -> Result<()> {
        let what = match self.format {
            Format::Safetensors => "config.json",
            Format::Gguf => "the GGUF metadata",
        };
        let cfg_path = match self.format {
            Format::Safetensors => self.source.join("config.json"),
            Format::Gguf => self.source.clone(),
        };
        let mut expected: HashMap<String, Vec<usize>> = HashMap::new();
        for (name, shape) in self.config.expected_shapes() {
            match self.info(&name) {
                None => {
                    return Err(CheckpointError::inconsistent(
                        &cfg_path,
                        format!(
                            "{what} implies a tensor {}, which the checkpoint lacks",
                            self.shown_name(&name)
                        ),
                    ))
                }
                Some(t) if t.shape != shape => {
                    return Err(CheckpointError::inconsistent(
                        &cfg_path,
                        format!(
                            "{what} implies shape {shape:?} for {}, but the file stores {:?}",
                            self.shown_name(&name),
                            t.shape
                        ),
                    ))
                }
                Some(_) => {}
            }
            expected.insert(name, shape);
        }
        // A tied model may still store its output head; then it is read.
        let head = WeightId::Head.hf_name();
        if let (Some(t), false) = (self.info(&head), expected.contains_key(&head)) {
            let shape = vec![self.config.vocab_size, self.config.d_model];
            if t.shape != shape {
                return Err(CheckpointError::inconsistent(
                    &cfg_path,
                    format!(
                        "{what} implies shape {shape:?} for {}, but the file stores {:?}",
                        self.shown_name(&head),
                        t.shape
                    ),
                ));
            }
            expected.insert(head, shape);
        }
        if let Some(RopeScaling::FrequencyFactors { tensor }) = &self.config.rope_scaling {
            if let Some(t) = self.info(tensor) {
                expected.insert(tensor.clone(), t.shape.clone());
            }
        }
        for t in &self.tensors {
            if expected.contains_key(&t.name) || t.name.ends_with(".rotary_emb.inv_freq") {
                continue;
            }
            let matrix = t
                .name
                .strip_suffix(".bias")
                .and_then(|base| expected.get(&format!("{base}.weight")))
                .filter(|s| s.len() == 2);
            match matrix {
                Some(s) if t.shape == [s[0]] => {}
                Some(s) => {
                    return Err(CheckpointError::inconsistent(
                        &t.file,
                        format!(
                            "the bias {} has shape {:?}, but its matrix has {} rows",
                            self.shown_name(&t.name),
                            t.shape,
                            s[0]
                        ),
                    ))
                }
                None => {
                    return Err(CheckpointError::inconsistent(
                        &cfg_path,
                        format!(
                            "the checkpoint has a tensor {} that a {} model as {what} describes it does not use",
                            self.shown_name(&t.name),
                            self.config.architecture.name()
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The directory or file this checkpoint was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Total number of parameters (elements of every tensor).
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(TensorInfo::elements).sum()
    }

    /// The GGUF metadata, for GGUF checkpoints.
    pub fn gguf_metadata(&self) -> Option<&BTreeMap<String, GgufValue>> {
        self.gguf_metadata.as_ref()
    }

    /// The tokenizer: tokenizer.json for directories, the GGUF's own vocabulary for GGUF.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        match &self.tokenizer {
            TokenizerSource::File(path) => {
                let bytes = files::read_limited(path, files::TOKENIZER_LIMIT, "a tokenizer.json")?;
                tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| CheckpointError::Tokenizer {
                    path: path.clone(),
                    message: e.to_string(),
                })
            }
            TokenizerSource::Gguf => gguf_tokenizer::build(
                &self.source,
                self.gguf_metadata
                    .as_ref()
                    .expect("GGUF checkpoints keep their metadata"),
            ),
            TokenizerSource::Missing => Err(CheckpointError::Tokenizer {
                path: self.source.clone(),
                message: "no tokenizer.json and no tokenizer.ggml.* metadata".into(),
            }),
        }
    }

    /// The chat template the checkpoint ships, if any.
    pub fn chat_template(&self) -> Option<String> {
        match &self.gguf_metadata {
            Some(m) => m
                .get("tokenizer.chat_template")?
                .as_str()
                .map(str::to_string),
            None => {
                let text = files::read_text(
                    &self.source.join("tokenizer_config.json"),
                    files::JSON_LIMIT,
                    "a JSON file",
                )
                .ok()?;
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                v.get("chat_template")?.as_str().map(str::to_string)
            }
        }
    }
}

/// A hidden sibling path for writing `path` atomically (write there, then rename).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.mwtop-tmp-{}", std::process::id()))
}
