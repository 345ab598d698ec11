//! Shared by the subcommands that run the model: device and dtype choice,
//! loading with a progress counter on stderr, tokenization of prompts.

use std::io::{IsTerminal, Write};

use candle_core::{DType, Device};

use crate::checkpoint::chat::{self, Message};
use crate::checkpoint::Checkpoint;
use crate::model::{Model, ModelError};

/// Checks a `--device` spelling without creating the device.
pub fn check_device_spec(spec: Option<&str>) -> Result<(), String> {
    match spec {
        None | Some("cpu") => Ok(()),
        Some(s) if s == "cuda" || s.starts_with("cuda:") => {
            if let Some(n) = s.strip_prefix("cuda:") {
                n.parse::<usize>()
                    .map_err(|_| format!("--device {s}: {n:?} is not a GPU number"))?;
            }
            if cfg!(feature = "cuda") {
                Ok(())
            } else {
                Err(format!(
                    "--device {s}: this mwtop was built without the cuda feature"
                ))
            }
        }
        Some(other) => Err(format!("--device {other:?}: expected cpu, cuda or cuda:N")),
    }
}

/// `cpu`, `cuda` or `cuda:N`; None: CUDA when compiled in and present, else CPU.
pub fn parse_device(spec: Option<&str>) -> Result<Device, String> {
    match spec {
        None => Ok(default_device()),
        Some("cpu") => Ok(Device::Cpu),
        Some(s) if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| format!("--device {s}: {n:?} is not a GPU number"))?,
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                return Err(format!(
                    "--device {s}: this mwtop was built without the cuda feature"
                ));
            }
            new_cuda(ordinal).map_err(|e| format!("--device {s}: {e}"))
        }
        Some(other) => Err(format!("--device {other:?}: expected cpu, cuda or cuda:N")),
    }
}

/// A CUDA device on one stream. cudarc's per-buffer event tracking exists to
/// order work across streams; mwtop uses one stream per device, and creating
/// and destroying two events for every intermediate tensor cost a measurable
/// share of each decoded token, so it is off.
fn new_cuda(ordinal: usize) -> candle_core::Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        // SAFETY: every tensor of this device is created and used on the
        // thread's one stream, so no cross-stream ordering is needed.
        unsafe { d.disable_event_tracking() };
    }
    Ok(device)
}

fn default_device() -> Device {
    if cfg!(feature = "cuda") {
        if let Ok(d) = new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

/// `f32` (default), `f16`, `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(format!("--dtype {other:?}: expected f32, f16 or bf16")),
    }
}

/// Loads the model, printing a counter on stderr when it is a terminal.
pub fn load_model(ckpt: &Checkpoint, device: &Device, dtype: DType) -> Result<Model, ModelError> {
    let tty = std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let model = Model::load(ckpt, device, dtype, |done, total| {
        if tty {
            eprint!("\rmwtop: loading weights {done}/{total}");
            let _ = std::io::stderr().flush();
        }
    })?;
    if tty {
        eprintln!(
            "\rmwtop: loaded {} weights in {:.1}s          ",
            ckpt.tensors().len(),
            start.elapsed().as_secs_f64()
        );
    }
    tracing::info!(
        elapsed_ms = start.elapsed().as_millis() as u64,
        "model loaded"
    );
    Ok(model)
}

/// Token ids of a prompt: raw text, or rendered with the checkpoint's chat template.
pub fn prompt_ids(
    ckpt: &Checkpoint,
    tok: &tokenizers::Tokenizer,
    prompt: &str,
    chat_mode: bool,
) -> Result<Vec<u32>, String> {
    let text = if chat_mode {
        let cfg = ckpt.config();
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        chat::render(
            ckpt.chat_template().as_deref(),
            &[Message::user(prompt)],
            &name(cfg.bos_token_id),
            &name(cfg.eos_token_ids.first().copied()),
        )?
    } else {
        prompt.to_string()
    };
    let enc = tok
        .encode(text.as_str(), false)
        .map_err(|e| format!("tokenizer: {e}"))?;
    Ok(enc.get_ids().to_vec())
}
