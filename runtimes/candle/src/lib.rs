//! `ferroserve-runtime-candle`: Hugging Face safetensors models on `candle`, behind ferroserve's
//! [`Runtime`] trait.
//!
//! A safetensors model is a version directory, not a file: `model.safetensors` (the weights), `config.json`
//! (the architecture, as text-embeddings-inference reads it), `tokenizer.json`, and for sentence-transformers
//! models `1_Pooling/config.json` and `modules.json` (pooling and normalisation). What it serves today:
//!
//! - encoders of the BERT family, by `config.json`'s `model_type` ([`arch`]): BERT, DistilBERT, RoBERTa and
//!   XLM-RoBERTa, as sentence encoders ([`encoder`]): text in (a BYTES `TEXT` input, `[batch, 1]`),
//!   tokenized in the server ([`text`]), truncated to the model's length and padded per batch; or token ids in
//!   (INT64 `input_ids`, `attention_mask`, optional `token_type_ids`, `[batch, seq]`) when the config declares
//!   `input_ids`. Out: FP32 `EMBEDDING` `[batch, hidden]`, pooled (mean or CLS) and L2-normalised when the
//!   model says so. A BERT with a sequence-classification head answers FP32 `LOGITS` instead.
//!
//! Each instance runs on its own thread, as every runtime does, with its tokenizer and a pool of
//! `intra_op_thread_count` threads of its own ([`threads`]); the weights are loaded once per model version and
//! shared by its instances ([`weights`]).

mod arch;
mod encoder;
mod files;
mod text;
mod threads;
mod weights;

use ferroserve_runtime::{Device, LoadSpec, Runtime, RuntimeError, RuntimeLoader};

/// The platform name this runtime answers to (config.pbtxt `platform`; `backend: "candle"` or
/// `"safetensors"` map to it too).
pub const PLATFORM: &str = "candle_safetensors";

/// Loads safetensors models with candle.
#[derive(Debug, Default, Clone, Copy)]
pub struct CandleLoader;

impl RuntimeLoader for CandleLoader {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn default_model_filename(&self) -> &'static str {
        "model.safetensors"
    }

    fn backend(&self) -> &'static str {
        "candle"
    }

    /// Weights (single file or sharded with an index) next to a Hugging Face `config.json`.
    fn recognizes(&self, files: &[String]) -> bool {
        let has = |name: &str| files.iter().any(|f| f == name);
        (has("model.safetensors") || has("model.safetensors.index.json")) && has("config.json")
    }

    fn cuda_support(&self) -> Result<(), String> {
        if cfg!(feature = "cuda") {
            Ok(())
        } else {
            Err("the candle runtime was built without CUDA (cargo feature `candle-cuda`)".into())
        }
    }

    fn load(&self, spec: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError> {
        let device = match spec.device {
            Device::Cpu => candle_core::Device::Cpu,
            Device::Cuda(ordinal) => cuda_device(ordinal)?,
        };
        Ok(Box::new(encoder::Encoder::load(spec, &device)?))
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: u32) -> Result<candle_core::Device, RuntimeError> {
    candle_core::Device::new_cuda(ordinal as usize)
        .map_err(|e| RuntimeError::DeviceUnavailable(Device::Cuda(ordinal), e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: u32) -> Result<candle_core::Device, RuntimeError> {
    Err(RuntimeError::DeviceUnavailable(
        Device::Cuda(ordinal),
        "this build of the candle runtime has no CUDA support (cargo feature `cuda`)".into(),
    ))
}
