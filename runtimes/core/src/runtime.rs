//! The [`Runtime`] trait every backend implements, and what loading one needs.

use std::path::PathBuf;

use crate::{DataType, Tensor};

/// Where an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host CPU.
    Cpu,
    /// A CUDA device by ordinal; each instance on it gets its own stream.
    Cuda(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// One input or output of a model: name, type and dims, `-1` where a dim varies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name as the model declares it.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Full dims including any batch dim; `-1` is variable.
    pub dims: Vec<i64>,
}

/// The inputs and outputs of a model, in the model's own order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelSignature {
    /// Inputs, in the order `Runtime::infer` receives them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the order `Runtime::infer` returns them.
    pub outputs: Vec<TensorSpec>,
}

impl ModelSignature {
    /// Position of the input called `name`.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|s| s.name == name)
    }

    /// Position of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|s| s.name == name)
    }
}

/// Everything a backend needs to load one instance of a model.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The model file (`model.onnx`, `model.pt`, ...) on local disk.
    pub model_path: PathBuf,
    /// Where this instance runs.
    pub device: Device,
    /// Threads the backend may use inside one operator (0 = backend default).
    pub intra_op_threads: usize,
}

/// Why a backend could not load or run a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The model file could not be loaded.
    #[error("failed to load {path}: {reason}")]
    Load {
        /// Model file.
        path: PathBuf,
        /// What the backend said.
        reason: String,
    },
    /// The model uses something this backend cannot express in the protocol (a map output, say).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The inputs were rejected by the backend (a shape the graph cannot take, say).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The requested device is not usable.
    #[error("device {0} is not available: {1}")]
    DeviceUnavailable(Device, String),
    /// Execution failed inside the backend.
    #[error("execution failed: {0}")]
    Execution(String),
}

/// One loaded model instance, owned by exactly one worker thread.
///
/// `infer` receives the inputs in signature order (the engine has validated names, types and shapes) and
/// returns every output in signature order. It runs synchronously; callers never call it on an async worker.
pub trait Runtime: Send {
    /// The model's inputs and outputs.
    fn signature(&self) -> &ModelSignature;

    /// Runs the model once on a (possibly batched) set of inputs.
    fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError>;
}

/// Creates [`Runtime`] instances for one model platform (`onnxruntime_onnx`, `pytorch_libtorch`, ...).
pub trait RuntimeLoader: Send + Sync {
    /// The Triton platform name this loader serves.
    fn platform(&self) -> &'static str;

    /// The file name a version directory holds for this platform (`model.onnx`).
    fn default_model_filename(&self) -> &'static str;

    /// Loads one instance; called on the instance's own thread.
    fn load(&self, spec: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError>;
}
