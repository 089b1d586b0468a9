//! The CUDA execution provider on a stream of the instance's own, so instances of one model on one GPU
//! overlap instead of queueing on the device's default stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use ferroserve_runtime::{Accelerator, Device, RuntimeError};
use ort::ep::ExecutionProviderDispatch;

/// A new stream on the device's primary context (the one ONNX Runtime itself uses).
pub(crate) fn instance_stream(ordinal: u32) -> Result<Arc<CudaStream>, RuntimeError> {
    let unavailable =
        |e: cudarc::driver::DriverError| RuntimeError::DeviceUnavailable(Device::Cuda(ordinal), format!("{e:?}"));
    let context = CudaContext::new(ordinal as usize).map_err(unavailable)?;
    // SAFETY: the server allocates no `CudaSlice` through cudarc (ONNX Runtime owns all device memory), so there
    // is nothing for event tracking to order; without it, making the first stream of this context handle does not
    // wait for every kernel running on the device (each instance has its own handle).
    #[allow(unsafe_code)]
    unsafe {
        context.disable_event_tracking();
    }
    context.new_stream().map_err(unavailable)
}

/// What a failed run means for the device. A failure that leaves the CUDA context unusable (an illegal address,
/// a kernel fault) is sticky: every later call on the device returns it, so a synchronisation tells it from one
/// the device recovers from (out of memory for one large batch, an unsupported shape). Only the former is a
/// [`RuntimeError::DeviceFault`], which stops the instance.
pub(crate) fn classify(stream: &CudaStream, error: RuntimeError) -> RuntimeError {
    match stream.synchronize() {
        Ok(()) => error,
        Err(fault) => RuntimeError::DeviceFault(format!("{error} (the CUDA context is unusable: {fault:?})")),
    }
}

/// The providers for `ordinal`, all on `stream`, in order of preference: TensorRT first where the config asks for
/// it (Triton's `gpu_execution_accelerator: [{ name: "tensorrt" }]`), then CUDA for what TensorRT does not take.
/// Each must register (a library without TensorRT fails the load with the reason, never drops to CUDA alone).
#[allow(unsafe_code)]
pub(crate) fn providers(
    ordinal: u32,
    stream: &Arc<CudaStream>,
    accelerators: &[Accelerator],
) -> Result<Vec<ExecutionProviderDispatch>, String> {
    let raw_stream = stream.cu_stream() as *mut ();
    let mut providers = Vec::with_capacity(accelerators.len() + 1);
    for accelerator in accelerators {
        match accelerator.name.as_str() {
            "tensorrt" => {
                let tensorrt = tensorrt(ordinal, &accelerator.parameters)?;
                // SAFETY: the stream is kept by the runtime beside its session and dropped after it.
                providers.push(unsafe { tensorrt.with_compute_stream(raw_stream) }.build().error_on_failure());
            }
            other => {
                return Err(format!(
                    "gpu_execution_accelerator `{other}` is not one ONNX Runtime takes here; `tensorrt` is"
                ));
            }
        }
    }
    let cuda = ort::ep::CUDA::default().with_device_id(ordinal as i32);
    // SAFETY: as above.
    providers.push(unsafe { cuda.with_compute_stream(raw_stream) }.build().error_on_failure());
    Ok(providers)
}

/// TensorRT's provider from Triton's parameters for it: `precision_mode` (`FP32`, `FP16`),
/// `max_workspace_size_bytes`, `trt_engine_cache_enable` and `trt_engine_cache_path`.
fn tensorrt(ordinal: u32, parameters: &BTreeMap<String, String>) -> Result<ort::ep::TensorRT, String> {
    let mut tensorrt = ort::ep::TensorRT::default().with_device_id(ordinal as i32);
    for (key, value) in parameters {
        tensorrt = match (key.as_str(), value.as_str()) {
            ("precision_mode", "FP32") => tensorrt,
            ("precision_mode", "FP16") => tensorrt.with_fp16(true),
            ("max_workspace_size_bytes", bytes) => tensorrt.with_max_workspace_size(
                bytes.parse().map_err(|_| format!("tensorrt `max_workspace_size_bytes` is `{bytes}`, not a number"))?,
            ),
            ("trt_engine_cache_enable", flag) => tensorrt.with_engine_cache(flag == "true" || flag == "1"),
            ("trt_engine_cache_path", path) => tensorrt.with_engine_cache_path(path),
            _ => return Err(format!("tensorrt parameter `{key}: {value}` is not one ferroserve takes")),
        };
    }
    Ok(tensorrt)
}

/// Whether the ONNX Runtime library loaded has the CUDA provider, or why not.
pub(crate) fn provider_available() -> Result<(), String> {
    use ort::ep::ExecutionProvider;
    match ort::ep::CUDA::is_available() {
        Ok(true) => Ok(()),
        Ok(false) => Err("the ONNX Runtime library loaded has no CUDA execution provider (point --onnxruntime-lib \
                          at the `onnxruntime-gpu` wheel's library)"
            .into()),
        Err(e) => Err(format!("ONNX Runtime could not list its execution providers: {e}")),
    }
}
