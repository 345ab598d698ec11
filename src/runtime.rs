//! Where a model comes from and where it runs: opening what the user named
//! (or the demo model) and choosing the device and compute dtype. Below the
//! engine and the CLI, which both use it.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::demo::{self, DemoError};
use crate::model::WeightPrecision;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("demo model: {0}")]
    Demo(#[from] DemoError),
}

/// A `--device` or `--dtype` that cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

/// Opens what the user named: a path, a hub id, or a demo model's name
/// (`smollm2`, `gemma3`; fetched once) when no file has that name; the
/// default demo model when nothing was named.
pub fn open_model(model: Option<&str>) -> Result<Checkpoint, OpenError> {
    match model.map(|spec| (spec, demo_named(spec))) {
        Some((spec, None)) => Ok(Checkpoint::open(spec)?),
        Some((_, Some(m))) => {
            let path: PathBuf = demo::ensure_model(m)?;
            Ok(Checkpoint::open_path(&path)?)
        }
        None => {
            let path: PathBuf = demo::ensure()?;
            Ok(Checkpoint::open_path(&path)?)
        }
    }
}

/// The demo model `spec` names, unless a file of that name is here.
pub fn demo_named(spec: &str) -> Option<&'static demo::DemoModel> {
    demo::by_name(spec).filter(|_| !std::path::Path::new(spec).exists())
}

/// The GPU ordinal a `--device` spelling names: None for the CPU.
fn cuda_ordinal(spec: &str) -> Result<Option<usize>, DeviceError> {
    match spec {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        s => match s.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .map(Some)
                .map_err(|_| DeviceError(format!("--device {s}: {n:?} is not a GPU number"))),
            None => Err(DeviceError(format!(
                "--device {s:?}: expected cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// The most devices one model's layers are split over.
pub const MAX_DEVICES: usize = 64;

/// The device spellings of a `--device` list (`cuda:0,cuda:1`, `cuda:0,cpu`),
/// each checked.
fn device_list(spec: &str) -> Result<Vec<(&str, Option<usize>)>, DeviceError> {
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    if parts.len() > MAX_DEVICES {
        return Err(DeviceError(format!(
            "--device {spec}: {} devices; at most {MAX_DEVICES}",
            parts.len()
        )));
    }
    parts
        .into_iter()
        .map(|p| {
            if p.is_empty() {
                return Err(DeviceError(format!(
                    "--device {spec:?}: an empty device in the list"
                )));
            }
            Ok((p, cuda_ordinal(p)?))
        })
        .collect()
}

/// Checks a `--device` spelling (one device or a list) without creating
/// the devices.
pub fn check_device_spec(spec: Option<&str>) -> Result<(), DeviceError> {
    let Some(s) = spec else { return Ok(()) };
    for (part, ordinal) in device_list(s)? {
        if ordinal.is_some() && !cfg!(feature = "cuda") {
            return Err(DeviceError(format!(
                "--device {part}: this mwtop was built without the cuda feature"
            )));
        }
    }
    Ok(())
}

/// The devices of `--device` (`cpu`, `cuda` or `cuda:N`; None: CUDA when
/// compiled in and present, else the CPU): one, or a comma-separated list that splits
/// the layers over them in order (`cuda:0,cuda:1`; `cuda:0,cpu` and
/// `cpu,cpu` run the same split path on one GPU or none). A GPU named twice
/// is one device.
pub fn parse_devices(spec: Option<&str>) -> Result<Vec<Device>, DeviceError> {
    let Some(s) = spec else {
        return Ok(vec![default_device()]);
    };
    check_device_spec(spec)?;
    let mut gpus: Vec<(usize, Device)> = Vec::new();
    let mut devices = Vec::new();
    for (part, ordinal) in device_list(s)? {
        let device = match ordinal {
            None => Device::Cpu,
            Some(n) => match gpus.iter().find(|(m, _)| *m == n) {
                Some((_, d)) => d.clone(),
                None => {
                    let d =
                        new_cuda(n).map_err(|e| DeviceError(format!("--device {part}: {e}")))?;
                    gpus.push((n, d.clone()));
                    d
                }
            },
        };
        devices.push(device);
    }
    Ok(devices)
}

/// How a model's matrices are held on `devices` unless the user says:
/// as stored where a GPU is among them, where memory is short and
/// converting a matrix costs little; in the compute dtype on the CPU,
/// where every prompt-sized product would convert its matrix on two cores
/// (one-token products read bf16/f16 directly on both).
pub fn weight_precision(asked: Option<WeightPrecision>, devices: &[Device]) -> WeightPrecision {
    asked.unwrap_or(if devices.iter().all(Device::is_cpu) {
        WeightPrecision::Compute
    } else {
        WeightPrecision::Stored
    })
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
pub fn parse_dtype(s: &str) -> Result<DType, DeviceError> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(DeviceError(format!(
            "--dtype {other:?}: expected f32, f16 or bf16"
        ))),
    }
}

/// "cuda" or "cpu", as reports name the device.
pub fn device_name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

/// Where a model runs, as reports name it: "cuda", "cpu", or for layers
/// split over devices each device with its layers, "cuda[0-15]+cpu[16-29]".
pub fn placement_name(placement: &crate::model::Placement) -> String {
    if !placement.is_split() {
        return device_name(placement.first()).into();
    }
    placement
        .groups()
        .into_iter()
        .map(|(d, layers)| {
            let name = device_name(&placement.devices()[d]);
            match layers.len() {
                0 => format!("{name}[]"),
                _ => format!("{name}[{}-{}]", layers.start, layers.end - 1),
            }
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// Reads a LoRA adapter (PEFT's format) for `model`, its shapes checked.
pub fn read_adapter(
    model: &crate::model::Model,
    dir: &std::path::Path,
) -> Result<crate::model::lora::Lora, crate::model::ModelError> {
    let file = crate::checkpoint::adapter::AdapterFile::read(dir)?;
    crate::model::lora::Lora::from_tensors(model, file.rank, file.alpha, file.tensors)
}

/// Reads a LoRA adapter (PEFT's format) and merges it into `model`'s
/// weights: exact up to one rounding per weight, and every later run
/// (recorded decode steps included) at the base model's speed. What was
/// merged, in words.
pub fn merge_adapter(
    model: &mut crate::model::Model,
    dir: &std::path::Path,
) -> Result<String, crate::model::ModelError> {
    let lora = read_adapter(model, dir)?;
    let n = lora.pairs().count();
    let (rank, alpha) = (lora.rank, lora.alpha);
    model.merge_lora(&lora)?;
    Ok(format!(
        "a rank-{rank} LoRA (alpha {alpha}) on {n} matrices from {}",
        dir.display()
    ))
}

/// What to do when the device runs out of memory (named once, for the CLI
/// and the UI alike).
pub const OUT_OF_MEMORY_ADVICE: &str = "the device ran out of memory: free it (other processes), or ask for less (a smaller --window or --batch, fewer --max-tokens, --dtype bf16, or --device cpu)";

/// Whether an error's text is a device allocation failure: the CUDA
/// driver's or cuBLAS's out-of-memory codes, which candle passes on as text.
pub fn is_out_of_memory(text: &str) -> bool {
    text.contains("CUDA_ERROR_OUT_OF_MEMORY")
        || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
        || text.to_ascii_lowercase().contains("out of memory")
}

/// An error's one-line text, with [`OUT_OF_MEMORY_ADVICE`] in front when
/// it is an out-of-memory failure, so it reads as advice, not a crash.
pub fn explain(text: String) -> String {
    if is_out_of_memory(&text) {
        format!("{OUT_OF_MEMORY_ADVICE} ({text})")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spellings() {
        assert!(check_device_spec(None).is_ok());
        assert!(check_device_spec(Some("cpu")).is_ok());
        assert!(matches!(
            parse_devices(Some("cpu")).as_deref(),
            Ok([Device::Cpu])
        ));
        assert!(matches!(
            parse_devices(Some("cpu, cpu")).as_deref(),
            Ok([Device::Cpu, Device::Cpu])
        ));
        let e = check_device_spec(Some("cuda:x")).unwrap_err().to_string();
        assert!(e.contains("\"x\" is not a GPU number"), "{e}");
        let e = check_device_spec(Some("tpu")).unwrap_err().to_string();
        assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = parse_devices(Some("cuda:1")).unwrap_err().to_string();
            assert!(e.contains("without the cuda feature"), "{e}");
        }
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f8").is_err());
    }

    /// The driver's text as candle wraps it (cudarc's DriverError).
    #[test]
    fn device_out_of_memory_is_explained() {
        let driver = "model: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        let got = explain(driver.to_string());
        assert!(got.starts_with("the device ran out of memory: "), "{got}");
        assert!(got.ends_with(&format!("({driver})")));
        assert!(is_out_of_memory("cublas: CUBLAS_STATUS_ALLOC_FAILED"));
        let other = "model.gguf: tensor x: shape mismatch".to_string();
        assert_eq!(explain(other.clone()), other);
    }
}
