//! ONNX models on ONNX Runtime through `ort`, with `libonnxruntime.so` loaded at start-up from a path
//! (the PyPI `onnxruntime` wheel carries one), never downloaded at build time.
//!
//! One [`OnnxRuntime`] wraps one `ort::Session`. `Session::run` takes `&mut self`, which matches the
//! [`Runtime`] contract: each instance thread owns its session; parallelism comes from more instances.

mod convert;
#[cfg(feature = "cuda")]
mod cuda;
mod strings;

use std::path::Path;

use ferroserve_runtime::{Device, LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, Tensor, TensorSpec};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::ValueType;

/// The Triton platform name for ONNX models.
pub const PLATFORM: &str = "onnxruntime_onnx";

/// Loads ONNX sessions; holds the process-wide ONNX Runtime environment.
pub struct OnnxLoader {
    environment: ort::environment::Environment,
}

impl std::fmt::Debug for OnnxLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxLoader").finish_non_exhaustive()
    }
}

impl OnnxLoader {
    /// Loads `libonnxruntime` from `dylib` and creates the environment. Call once per process.
    pub fn new(dylib: &Path) -> Result<Self, RuntimeError> {
        if !dylib.is_file() {
            return Err(RuntimeError::Load {
                path: dylib.to_path_buf(),
                reason: "ONNX Runtime library not found (install the `onnxruntime` wheel and point \
                         --onnxruntime-lib or ORT_DYLIB_PATH at its capi/libonnxruntime.so.*)"
                    .into(),
            });
        }
        let load_error = |reason: String| RuntimeError::Load { path: dylib.to_path_buf(), reason };
        let builder = ort::init_from(dylib).map_err(|e| load_error(e.to_string()))?;
        let environment = builder.with_name("ferroserve").build().map_err(|e| load_error(e.to_string()))?;
        Ok(OnnxLoader { environment })
    }
}

impl RuntimeLoader for OnnxLoader {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn default_model_filename(&self) -> &'static str {
        "model.onnx"
    }

    /// Built with `cuda`, and the ONNX Runtime library loaded has the CUDA provider (the `onnxruntime` wheel's
    /// has not; the `onnxruntime-gpu` wheel's has), so `KIND_AUTO` goes to the GPU only where it can run there.
    fn cuda_support(&self) -> Result<(), String> {
        #[cfg(feature = "cuda")]
        return cuda::provider_available();
        #[cfg(not(feature = "cuda"))]
        Err("the onnxruntime runtime was built without CUDA (cargo feature `cuda`)".into())
    }

    fn load(&self, spec: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError> {
        let runtime = OnnxRuntime::load(&self.environment, spec)?;
        Ok(Box::new(runtime))
    }
}

/// One ONNX Runtime session: one model instance.
pub struct OnnxRuntime {
    session: Session,
    signature: ModelSignature,
    /// The instance's own CUDA stream, which the session runs on; declared after `session` so it outlives it.
    #[cfg(feature = "cuda")]
    stream: Option<std::sync::Arc<cudarc::driver::CudaStream>>,
}

impl OnnxRuntime {
    fn load(environment: &ort::environment::Environment, spec: &LoadSpec) -> Result<Self, RuntimeError> {
        let path = &spec.model_path;
        let fail = |e: ort::Error| RuntimeError::Load { path: path.clone(), reason: e.to_string() };
        if let Device::Cuda(_) = spec.device {
            #[cfg(not(feature = "cuda"))]
            return Err(RuntimeError::DeviceUnavailable(spec.device, "built without the `cuda` feature".into()));
        }
        let mut builder = Session::builder(environment)
            .map_err(fail)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail(e.into()))?
            // Spinning intra-op threads steal cores from other instances and the network stack.
            .with_config_entry("session.intra_op.allow_spinning", "0")
            .map_err(|e| fail(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| fail(e.into()))?;
        if spec.intra_op_threads > 0 {
            builder = builder.with_intra_threads(spec.intra_op_threads).map_err(|e| fail(e.into()))?;
        }
        #[cfg(feature = "cuda")]
        let stream = match spec.device {
            Device::Cuda(ordinal) => {
                let stream = cuda::instance_stream(ordinal)?;
                let providers = cuda::providers(ordinal, &stream, &spec.gpu_accelerators)
                    .map_err(|reason| RuntimeError::Load { path: path.clone(), reason })?;
                builder = builder.with_execution_providers(providers).map_err(|e| fail(e.into()))?;
                Some(stream)
            }
            Device::Cpu => None,
        };
        let session = builder.commit_from_file(path).map_err(fail)?;
        let signature = ModelSignature {
            inputs: session.inputs().iter().map(|o| spec_of(o.name(), o.dtype())).collect::<Result<_, _>>()?,
            outputs: session.outputs().iter().map(|o| spec_of(o.name(), o.dtype())).collect::<Result<_, _>>()?,
        };
        tracing::debug!(model = %path.display(), device = %spec.device, "onnx session ready");
        Ok(OnnxRuntime {
            session,
            signature,
            #[cfg(feature = "cuda")]
            stream,
        })
    }
}

fn spec_of(name: &str, dtype: &ValueType) -> Result<TensorSpec, RuntimeError> {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: name.to_string(),
            datatype: convert::datatype_of(*ty)
                .ok_or_else(|| RuntimeError::Unsupported(format!("tensor `{name}` has element type {ty:?}")))?,
            dims: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
        }),
        other => Err(RuntimeError::Unsupported(format!("`{name}` is a {other:?}, not a tensor"))),
    }
}

impl Runtime for OnnxRuntime {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let values = inputs
            .into_iter()
            .map(convert::to_value)
            .map(|v| v.map(ort::session::SessionInputValue::from))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs = match self.session.run(&values[..]) {
            Ok(outputs) => outputs,
            Err(e) => {
                let error = run_error(&self.signature, &values, e);
                #[cfg(feature = "cuda")]
                if let Some(stream) = &self.stream {
                    return Err(cuda::classify(stream, error));
                }
                return Err(error);
            }
        };
        // ONNX Runtime does not wait for a stream it does not own; the outputs are read once it is done.
        #[cfg(feature = "cuda")]
        if let Some(stream) = &self.stream {
            stream.synchronize().map_err(|e| RuntimeError::DeviceFault(format!("the CUDA stream failed: {e:?}")))?;
        }
        let mut result = Vec::with_capacity(self.signature.outputs.len());
        for spec in &self.signature.outputs {
            let value = outputs
                .remove(spec.name.as_str())
                .ok_or_else(|| RuntimeError::Execution(format!("output `{}` missing from the run", spec.name)))?;
            result.push(convert::from_value(&value)?);
        }
        Ok(result)
    }
}

/// What a failed run means for the caller.
///
/// BYTES reach the model unchanged, so a client can send bytes that a string kernel refuses (StringNormalizer on
/// text that is not UTF-8, say); ONNX Runtime reports that as a plain failure. When an input holds such bytes,
/// the failure is put down to it: `InvalidInput`, naming the input and element, so the engine runs a batch's
/// requests again one by one and refuses only the offending one. Checked only once a run has failed, so the
/// inputs are not scanned on the way in.
fn run_error(
    signature: &ModelSignature,
    values: &[ort::session::SessionInputValue<'_>],
    error: ort::Error,
) -> RuntimeError {
    for (spec, value) in signature.inputs.iter().zip(values) {
        if let Some(index) = strings::first_non_utf8(value) {
            tracing::debug!(input = %spec.name, index, error = %error, "the model failed on BYTES that are not UTF-8");
            return RuntimeError::InvalidInput(format!(
                "`{}` element {index} is not UTF-8 text, and the model cannot take it",
                spec.name
            ));
        }
    }
    RuntimeError::Execution(error.to_string())
}
