//! `ferroserve-runtime`: the vocabulary every backend and the engine share.
//!
//! A [`Tensor`] is a data type, a concrete shape and its elements, kept as little-endian row-major bytes (or
//! a list of byte strings for `BYTES`). Keeping one raw layout means the HTTP binary extension and gRPC raw
//! contents hand their buffers straight to a backend without a typed detour, and JSON decodes once into it.
//!
//! A [`Runtime`] is one loaded model instance, owned by one worker thread: its `infer` takes `&mut self`
//! because ONNX Runtime sessions, TorchScript modules on a CUDA stream and candle models all want exclusive
//! use. More parallelism means more instances, never a lock around one. This crate has no ML, HTTP or async
//! dependencies so that every backend can depend on it cheaply.

mod datatype;
mod runtime;
mod tensor;

pub use datatype::DataType;
pub use runtime::{Accelerator, Device, LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, TensorSpec};
pub use tensor::{BatchError, Tensor, TensorData, TensorError};
