//! The CUDA devices of this machine: which there are (the driver API through `cudarc`, loaded at run time, so
//! the binary starts where there is no driver), which the server may use (`--gpus`), and how busy they are
//! (NVML, also loaded at run time).
//!
//! Discovery creates no CUDA context: it asks the driver for the count, names, memory and UUIDs only, so a
//! server that ends up placing no model on a GPU holds no GPU memory.

mod discovery;
mod monitor;

pub use discovery::{GpuInfo, GpuSelection, NoGpu, SelectionError, discover, select};
pub use monitor::{GpuMonitor, GpuSample};
