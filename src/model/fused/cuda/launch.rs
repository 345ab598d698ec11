//! How the decode path's kernels are launched: from the module compiled
//! for the device (with programmatic dependent launch on sm_90 and later,
//! see kernels.cu), with their arguments packed by hand because
//! cudarc's launch builder has no launch attributes.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use candle_core::cuda::cudarc::driver::{sys, CudaFunction, CudaSlice, CudaStream, CudaView};
use candle_core::cuda::cudarc::driver::{DevicePtr, LaunchConfig};
use candle_core::cuda::cudarc::nvrtc;
use candle_core::cuda::WrapErr;
use std::sync::Arc;

use super::SOURCE;

/// The kernels compiled for compute capability 9.0: the module devices of
/// 9.0 and later load, and the only one whose kernels wait for the kernel
/// before them (griddepcontrol), so the only one launched overlapped.
fn ptx_sm90() -> Option<&'static str> {
    static PTX: OnceLock<Option<String>> = OnceLock::new();
    PTX.get_or_init(|| {
        // `MWTOP_GEMV_BURST=N` (1 to 32): the GEMV's loads in flight per
        // lane, to measure it (8 by default; the sums run in the same order
        // whatever it is).
        let burst = std::env::var("MWTOP_GEMV_BURST")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|b| (1..=32).contains(b));
        // `MWTOP_GEMV_HOIST=0`: the GEMV loads x per chunk as it multiplies
        // (to measure the hoisted loads; the products' sums run in the same
        // order, the norm's sum of squares in another).
        let unhoisted = std::env::var("MWTOP_GEMV_HOIST").as_deref() == Ok("0");
        let mut options: Vec<String> = burst
            .map(|b| format!("-DMWTOP_GEMV_BURST={b}"))
            .into_iter()
            .collect();
        if unhoisted {
            options.push("-DMWTOP_GEMV_HOIST=0".into());
        }
        // `MWTOP_GEMV_EXACT=0`: the one- and two-row GEMV builds test the
        // row count at run time, as the general one does (to measure it).
        if std::env::var("MWTOP_GEMV_EXACT").as_deref() == Ok("0") {
            options.push("-DMWTOP_GEMV_EXACT_N=0".into());
        }
        // `MWTOP_GEMVQ_BURST=N` (1 to 16): the parts a lane of the block
        // GEMV loads before forming them (8 by default; the same sums).
        if let Some(b) = std::env::var("MWTOP_GEMVQ_BURST")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|b| (1..=16).contains(b))
        {
            options.push(format!("-DMWTOP_GEMVQ_BURST={b}"));
        }
        let opts = nvrtc::CompileOptions {
            arch: Some("compute_90"),
            options,
            ..Default::default()
        };
        match nvrtc::compile_ptx_with_opts(SOURCE, opts) {
            Ok(p) => Some(p.to_src()),
            Err(e) => {
                tracing::warn!("kernels for sm_90 did not compile, launching in order ({e})");
                None
            }
        }
    })
    .as_deref()
}

/// Whether overlapped launches are on: `MWTOP_PDL=0` turns them off (to
/// measure what they bring; the results are the same bits either way).
fn pdl_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("MWTOP_PDL").as_deref() != Ok("0"))
}

/// Whether the device (by ordinal) is of compute capability 9.0 or later.
fn is_sm90(dev: &candle_core::CudaDevice) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<usize, bool>>> = OnceLock::new();
    let ctx = dev.cuda_stream().context().clone();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *seen
        .entry(ctx.ordinal())
        .or_insert_with(|| ctx.compute_capability().is_ok_and(|(major, _)| major >= 9))
}

/// Kernel `name` for `dev`, and whether it may be launched overlapped.
pub(super) fn function(
    dev: &candle_core::CudaDevice,
    name: &str,
) -> candle_core::Result<(CudaFunction, bool)> {
    if pdl_enabled() && is_sm90(dev) {
        if let Some(ptx) = ptx_sm90() {
            let f = dev.get_or_load_custom_func(name, "mwtop_fused_sm90", ptx)?;
            return Ok((f.into_cuda_function(), true));
        }
    }
    let ptx = super::ptx().ok_or_else(|| candle_core::Error::Msg("no PTX".into()))?;
    let f = dev.get_or_load_custom_func(name, "mwtop_fused", ptx)?;
    Ok((f.into_cuda_function(), false))
}

/// A kernel's arguments, each held in 8 bytes (pointers, and 4-byte
/// scalars in the low bytes, which is where the driver reads them on the
/// little-endian hosts CUDA runs on).
pub(super) struct Args {
    stream: Arc<CudaStream>,
    values: Vec<u64>,
}

impl Args {
    pub(super) fn new(dev: &candle_core::CudaDevice) -> Self {
        Self {
            stream: dev.cuda_stream(),
            values: Vec::with_capacity(24),
        }
    }

    pub(super) fn view<T>(&mut self, v: &CudaView<'_, T>) -> &mut Self {
        let ptr = v.device_ptr(&self.stream).0;
        self.values.push(ptr);
        self
    }

    pub(super) fn slice<T>(&mut self, s: &CudaSlice<T>) -> &mut Self {
        let ptr = s.device_ptr(&self.stream).0;
        self.values.push(ptr);
        self
    }

    /// A view, or the kernel's null pointer.
    pub(super) fn maybe<T>(&mut self, v: Option<&CudaView<'_, T>>) -> &mut Self {
        match v {
            Some(v) => self.view(v),
            None => {
                self.values.push(0);
                self
            }
        }
    }

    pub(super) fn i32(&mut self, v: i32) -> &mut Self {
        self.values.push(u64::from(v as u32));
        self
    }

    pub(super) fn i64(&mut self, v: i64) -> &mut Self {
        self.values.push(v as u64);
        self
    }

    pub(super) fn f32(&mut self, v: f32) -> &mut Self {
        self.values.push(u64::from(v.to_bits()));
        self
    }

    /// Launches `func` with these arguments on the device's stream,
    /// overlapped with the kernel before when `overlapped`.
    ///
    /// # Safety
    /// The arguments must be the kernel's, in its order and of its types,
    /// and every buffer large enough for what the kernel reads and writes.
    pub(super) unsafe fn launch(
        mut self,
        func: &CudaFunction,
        overlapped: bool,
        cfg: LaunchConfig,
    ) -> candle_core::Result<()> {
        self.stream.context().bind_to_thread().w()?;
        let mut params: Vec<*mut c_void> = self
            .values
            .iter_mut()
            .map(|v| (v as *mut u64).cast::<c_void>())
            .collect();
        // SAFETY: an all-zero attribute is a valid (ignored) value; the
        // one field set is the one the id names.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(overlapped),
        };
        // SAFETY: the caller vouches for the arguments; `params` and the
        // values it points at outlive the call, which copies them.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                func.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .w()
    }
}
