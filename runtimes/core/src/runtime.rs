//! The [`Runtime`] trait every backend implements, and what loading one needs.

use std::collections::BTreeMap;
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
///
/// Formats differ in what the file itself says: an ONNX file carries its signature, a TorchScript file does
/// not (the config's `input`/`output` are authoritative, as in Triton's PyTorch backend), and a safetensors
/// model is a whole directory (weights, `config.json`, tokenizer, pooling). So a loader gets the version
/// directory and what the config declares, besides the model file.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The model file (`model.onnx`, `model.pt`, `model.safetensors`, ...) on local disk.
    pub model_path: PathBuf,
    /// The version directory holding it and any companion files.
    pub version_dir: PathBuf,
    /// Where this instance runs.
    pub device: Device,
    /// Threads the backend may use inside one operator (0 = backend default).
    pub intra_op_threads: usize,
    /// Inputs and outputs the config declares with a datatype, full dims (batch dim included as -1 when the
    /// model batches); empty when the config declares none.
    pub declared: ModelSignature,
    /// The config's `max_batch_size` (0 = no batch dim).
    pub max_batch_size: u32,
    /// The config's `parameters` (string values).
    pub parameters: BTreeMap<String, String>,
    /// Accelerators the config asks for on a GPU, in order of preference (Triton's
    /// `optimization.execution_accelerators.gpu_execution_accelerator`); ignored on CPU.
    pub gpu_accelerators: Vec<Accelerator>,
}

/// One execution accelerator a config names (`tensorrt`), with its parameters as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accelerator {
    /// Its name.
    pub name: String,
    /// Its `parameters` (`precision_mode: FP16`, `max_workspace_size_bytes`, ...).
    pub parameters: BTreeMap<String, String>,
}

impl LoadSpec {
    /// A spec for `model_path` with nothing declared: the file's own signature is used.
    pub fn new(model_path: PathBuf, device: Device, intra_op_threads: usize) -> Self {
        let version_dir = model_path.parent().map(PathBuf::from).unwrap_or_default();
        LoadSpec {
            model_path,
            version_dir,
            device,
            intra_op_threads,
            declared: ModelSignature::default(),
            max_batch_size: 0,
            parameters: BTreeMap::new(),
            gpu_accelerators: Vec::new(),
        }
    }
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
    /// The device failed in a way that fails every later run too (a CUDA error that poisons the context):
    /// the instance stops taking batches, and the model is not ready once no instance is left.
    #[error("device failure: {0}")]
    DeviceFault(String),
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

    /// The backend name Triton's config uses for this platform (`onnxruntime`, `pytorch`).
    fn backend(&self) -> &'static str {
        self.platform().split('_').next().unwrap_or_else(|| self.platform())
    }

    /// Whether the model file carries no signature, so the config's `input`/`output` are the signature
    /// (TorchScript): then a config without `max_batch_size` means 0, as in Triton, not "batch if you can".
    fn signature_from_config(&self) -> bool {
        false
    }

    /// Whether instances of this runtime can run on a CUDA device, or why not (built without its `cuda`
    /// feature, say). A `KIND_AUTO` instance group goes to the GPUs only when this is `Ok`; a `KIND_GPU` group
    /// fails its load with the reason.
    fn cuda_support(&self) -> Result<(), String> {
        Err(format!("the `{}` runtime has no CUDA support", self.backend()))
    }

    /// Whether a version directory holding `files` (names relative to it) is a model of this platform, when
    /// no config names the platform.
    fn recognizes(&self, files: &[String]) -> bool {
        files.iter().any(|f| f == self.default_model_filename())
    }

    /// Loads one instance; called on the instance's own thread.
    fn load(&self, spec: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError>;
}
