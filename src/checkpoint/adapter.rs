//! LoRA adapters in PEFT's format, so transformers + peft load what mwtop
//! trains and mwtop loads what PEFT trains: `adapter_config.json` and
//! `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use super::{CheckpointError, Proj, Result, WeightId};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A LoRA adapter as stored.
#[derive(Debug, Clone)]
pub struct AdapterFile {
    pub rank: usize,
    pub alpha: f64,
    /// (lora_A (rank, in), lora_B (out, rank)) per adapted matrix.
    pub tensors: BTreeMap<WeightId, (Tensor, Tensor)>,
    /// What it was trained on (PEFT's base_model_name_or_path).
    pub base_model: Option<String>,
}

fn peft_name(id: WeightId, part: &str) -> Option<String> {
    match id {
        WeightId::Layer { layer, proj } => Some(format!(
            "base_model.model.model.layers.{layer}.{}.lora_{part}.weight",
            proj.hf_module()
        )),
        _ => None,
    }
}

/// The module's last name, as PEFT's target_modules lists it.
fn module_name(proj: Proj) -> &'static str {
    let m = proj.hf_module();
    m.rsplit('.').next().unwrap_or(m)
}

/// Parses `...layers.{i}.{module}.lora_{A|B}[.default].weight`: the
/// matrix and whether this is A.
pub fn parse_peft_name(name: &str) -> Option<(WeightId, bool)> {
    let name = name.strip_suffix(".weight")?;
    let name = name.strip_suffix(".default").unwrap_or(name);
    let (module, is_a) = if let Some(m) = name.strip_suffix(".lora_A") {
        (m, true)
    } else {
        (name.strip_suffix(".lora_B")?, false)
    };
    let at = module.find("model.layers.")?;
    let id = WeightId::from_hf_name(&format!("{}.weight", &module[at..]))?;
    Some((id, is_a))
}

impl AdapterFile {
    /// Reads an adapter directory; refuses what mwtop would not apply as
    /// PEFT does (DoRA, rsLoRA, per-module ranks, biases, extra modules).
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = super::files::read_text(&config_path, super::files::JSON_LIMIT, "a JSON file")?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::malformed(&config_path, format!("invalid JSON: {e}")))?;
        if !cfg.is_object() {
            return Err(CheckpointError::malformed(
                &config_path,
                "expected a JSON object",
            ));
        }
        let unsupported = |message: String| CheckpointError::Unsupported {
            path: config_path.clone(),
            message,
        };
        let peft_type = cfg.get("peft_type").and_then(Value::as_str).unwrap_or("");
        if peft_type != "LORA" {
            return Err(unsupported(format!(
                "peft_type {peft_type:?} (only LORA adapters apply)"
            )));
        }
        for flag in ["use_dora", "use_rslora", "fan_in_fan_out", "lora_bias"] {
            if cfg.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(unsupported(format!("{flag} is set")));
            }
        }
        for pattern in ["rank_pattern", "alpha_pattern"] {
            if cfg
                .get(pattern)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(unsupported(format!("a {pattern} (ranks per module)")));
            }
        }
        if cfg
            .get("bias")
            .and_then(Value::as_str)
            .is_some_and(|b| b != "none")
        {
            return Err(unsupported("trained biases (bias != \"none\")".into()));
        }
        if cfg
            .get("modules_to_save")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(unsupported(
                "modules_to_save (whole modules trained)".into(),
            ));
        }
        let rank = cfg
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| {
                CheckpointError::malformed(&config_path, "r must be a positive integer")
            })? as usize;
        let alpha = cfg
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .filter(|a| a.is_finite() && *a > 0.0)
            .ok_or_else(|| {
                CheckpointError::malformed(&config_path, "lora_alpha must be a positive number")
            })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        super::files::regular_file(&weights_path)?;
        let stored = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| CheckpointError::malformed(&weights_path, e.to_string()))?;
        let mut halves: BTreeMap<WeightId, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (name, t) in stored {
            let (id, is_a) =
                parse_peft_name(&name).ok_or_else(|| CheckpointError::Unsupported {
                    path: weights_path.clone(),
                    message: format!("tensor {name} is not a LoRA A or B of a decoder projection"),
                })?;
            let slot = halves.entry(id).or_default();
            if is_a {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        let mut tensors = BTreeMap::new();
        for (id, pair) in halves {
            match pair {
                (Some(a), Some(b)) => {
                    tensors.insert(id, (a, b));
                }
                (a, _) => {
                    return Err(CheckpointError::MissingTensor {
                        path: weights_path.clone(),
                        name: peft_name(id, if a.is_some() { "B" } else { "A" })
                            .unwrap_or_default(),
                    })
                }
            }
        }
        if tensors.is_empty() {
            return Err(CheckpointError::malformed(&weights_path, "no LoRA tensors"));
        }
        Ok(Self {
            rank,
            alpha,
            tensors,
            base_model: cfg
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// Writes the adapter into `dir`: into a temporary sibling first, then
    /// renamed, so a reader never sees half an adapter. An existing
    /// adapter directory is replaced; any other existing path is refused.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_with(dir, |_| Ok(()))
    }

    /// As [`Self::write`], with `extra` adding files to the directory
    /// before it is renamed into place (a trainer's state).
    pub fn write_with(&self, dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        if dir.exists() && !dir.join(CONFIG_FILE).is_file() {
            let empty = std::fs::read_dir(dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(CheckpointError::Unsupported {
                    path: dir.to_path_buf(),
                    message: "exists and is not an adapter directory (refusing to replace it)"
                        .into(),
                });
            }
        }
        let io = |path: PathBuf| move |source| CheckpointError::Io { path, source };
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "adapter".into());
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(tmp.clone()))?;
        let result = self
            .write_files(&tmp)
            .and_then(|()| extra(&tmp))
            .and_then(|()| {
                let old = parent.join(format!(".{name}.old-{}", std::process::id()));
                if dir.exists() {
                    std::fs::rename(dir, &old).map_err(io(dir.to_path_buf()))?;
                }
                std::fs::rename(&tmp, dir).map_err(io(dir.to_path_buf()))?;
                let _ = std::fs::remove_dir_all(&old);
                Ok(())
            });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        let weights_path = dir.join(WEIGHTS_FILE);
        let mut named: HashMap<String, Tensor> = HashMap::new();
        for (&id, (a, b)) in &self.tensors {
            let (Some(na), Some(nb)) = (peft_name(id, "A"), peft_name(id, "B")) else {
                return Err(CheckpointError::Unsupported {
                    path: weights_path,
                    message: format!("an adapter on {id}"),
                });
            };
            named.insert(
                na,
                a.contiguous().map_err(|e| candle(&weights_path, id, e))?,
            );
            named.insert(
                nb,
                b.contiguous().map_err(|e| candle(&weights_path, id, e))?,
            );
        }
        candle_core::safetensors::save(&named, &weights_path).map_err(|e| CheckpointError::Io {
            path: weights_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut modules: Vec<&str> = self
            .tensors
            .keys()
            .filter_map(|id| match id {
                WeightId::Layer { proj, .. } => Some(module_name(*proj)),
                _ => None,
            })
            .collect();
        modules.sort();
        modules.dedup();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "base_model_name_or_path": self.base_model,
            "revision": null,
        });
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
        std::fs::write(&path, text + "\n").map_err(|source| CheckpointError::Io { path, source })
    }
}

/// Refuses to replace `dir` unless it is absent, empty or an adapter
/// directory: what the user keeps there is never lost.
pub fn check_replaceable(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.join(CONFIG_FILE).is_file() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(CheckpointError::Unsupported {
                path: dir.to_path_buf(),
                message: "exists and is not an adapter directory (refusing to replace it)".into(),
            });
        }
    }
    Ok(())
}

fn candle(path: &Path, id: WeightId, e: candle_core::Error) -> CheckpointError {
    CheckpointError::Candle {
        path: path.to_path_buf(),
        name: id.hf_name(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_round_trip() {
        let id = WeightId::layer(3, Proj::Gate);
        let a = peft_name(id, "A").unwrap();
        assert_eq!(
            a,
            "base_model.model.model.layers.3.mlp.gate_proj.lora_A.weight"
        );
        assert_eq!(parse_peft_name(&a), Some((id, true)));
        assert_eq!(
            parse_peft_name(
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
            ),
            Some((WeightId::layer(0, Proj::Q), false))
        );
        assert_eq!(parse_peft_name("base_model.model.lm_head.weight"), None);
        assert_eq!(module_name(Proj::Down), "down_proj");
    }
}
