//! The CUDA execution provider on a stream of the instance's own, so instances of one model on one GPU
//! overlap instead of queueing on the device's default stream.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use ferroserve_runtime::{Device, RuntimeError};

/// A new stream on the device's primary context (the one ONNX Runtime itself uses).
pub(crate) fn instance_stream(ordinal: u32) -> Result<Arc<CudaStream>, RuntimeError> {
    let unavailable =
        |e: cudarc::driver::DriverError| RuntimeError::DeviceUnavailable(Device::Cuda(ordinal), format!("{e:?}"));
    let context = CudaContext::new(ordinal as usize).map_err(unavailable)?;
    context.new_stream().map_err(unavailable)
}

/// The provider for `ordinal`, running on `stream`.
#[allow(unsafe_code)]
pub(crate) fn provider(ordinal: u32, stream: &Arc<CudaStream>) -> ort::ep::CUDA {
    let provider = ort::ep::CUDA::default().with_device_id(ordinal as i32);
    // SAFETY: the stream is kept by the runtime beside its session and dropped after it.
    unsafe { provider.with_compute_stream(stream.cu_stream() as *mut ()) }
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
