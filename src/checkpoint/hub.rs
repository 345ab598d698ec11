//! Hub ids (`HuggingFaceTB/SmolLM2-135M-Instruct`) resolved through hf-hub into
//! a local snapshot directory of the standard Hugging Face cache.
//!
//! Environment, as the Python `huggingface_hub` reads it: `HF_HUB_CACHE`
//! (else `HF_HOME/hub`, else `~/.cache/huggingface/hub`), `HF_ENDPOINT`, and
//! `HF_HUB_OFFLINE=1` to use only what is cached. A file already in the cache
//! is never fetched again.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::error::{CheckpointError, Result};

/// `owner/name` or `owner/name@revision`, with the characters the hub allows.
pub fn looks_like_hub_id(spec: &str) -> bool {
    let id = spec.split_once('@').map_or(spec, |(id, _)| id);
    let mut parts = id.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(owner) && ok(name)
}

fn hub_err(message: String) -> CheckpointError {
    CheckpointError::Hub { message }
}

/// The hub cache directory, following huggingface_hub's variables.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    Cache::from_env().path().clone()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
        .unwrap_or(false)
}

/// Where files come from: the network (cache first) or the cache alone.
enum Source {
    Online(ApiRepo),
    Offline(hf_hub::CacheRepo),
}

impl Source {
    fn get(&self, id: &str, file: &str) -> Result<PathBuf> {
        match self {
            Source::Online(api) => api
                .get(file)
                .map_err(|e| hub_err(format!("{id}: cannot fetch {file}: {e}"))),
            Source::Offline(cache) => cache.get(file).ok_or_else(|| {
                hub_err(format!(
                    "{id}: {file} is not in the cache {} and HF_HUB_OFFLINE is set",
                    cache_dir().display()
                ))
            }),
        }
    }
}

/// Fetches (or finds in the cache) config, tokenizer and weights of a hub
/// model and returns the snapshot directory that holds them.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev.to_string()),
        None => (spec, "main".to_string()),
    };
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision);
    let cache = Cache::new(cache_dir());
    let source = if offline() {
        Source::Offline(cache.repo(repo))
    } else {
        let mut builder = ApiBuilder::from_cache(cache)
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        let api = builder
            .build()
            .map_err(|e| hub_err(format!("cannot set up the hub client: {e}")))?;
        Source::Online(api.repo(repo))
    };
    tracing::info!(id, "resolving hub model");
    let config = source.get(id, "config.json")?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| hub_err(format!("{id}: odd cache path {}", config.display())))?;
    if let Err(e) = source.get(id, "tokenizer.json") {
        tracing::warn!("{e}");
    }
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        let _ = source.get(id, optional);
    }
    match source.get(id, "model.safetensors.index.json") {
        Ok(index) => {
            let text = super::files::read_text(&index, super::files::JSON_LIMIT, "a JSON file")?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CheckpointError::malformed(&index, format!("invalid JSON: {e}")))?;
            let mut shards: Vec<String> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                source.get(id, &shard)?;
            }
        }
        Err(_) => {
            source.get(id, "model.safetensors")?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::looks_like_hub_id;

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_hub_id("org/model@v1.0"));
        assert!(!looks_like_hub_id("./model-dir"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("model.gguf"));
        assert!(!looks_like_hub_id("../x"));
    }
}
