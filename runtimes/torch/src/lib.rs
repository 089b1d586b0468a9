//! `ferroserve-runtime-torch`: TorchScript models on libtorch (`tch`), behind ferroserve's [`Runtime`] trait.
//!
//! A TorchScript file has no input or output names or types, so the signature is the one `config.pbtxt`
//! declares, as in Triton's PyTorch backend: inputs are passed to `forward` by position, and the module's
//! result (one tensor, or a tuple or list of them) is matched to the declared outputs by position. Names
//! follow whatever the config says (`INPUT__0`/`OUTPUT__0` by Triton's convention, or any names).
//!
//! libtorch comes from the PyPI `torch` wheel (`LIBTORCH=<site-packages>/torch`); only `libtorch_cpu` and
//! `libc10` are linked, whose own dependencies are two small CUDA runtime wheels. Each instance owns its
//! `CModule` on its own thread and runs it under `no_grad`.

mod convert;

use std::sync::Once;

use ferroserve_runtime::{Device, LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, Tensor};

/// The Triton platform name of TorchScript models.
pub const PLATFORM: &str = "pytorch_libtorch";

/// Loads TorchScript modules.
#[derive(Debug)]
pub struct TorchLoader {
    threads: Once,
}

impl Default for TorchLoader {
    fn default() -> Self {
        TorchLoader { threads: Once::new() }
    }
}

impl RuntimeLoader for TorchLoader {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn default_model_filename(&self) -> &'static str {
        "model.pt"
    }

    fn backend(&self) -> &'static str {
        "pytorch"
    }

    fn signature_from_config(&self) -> bool {
        true
    }

    /// libtorch must see a device: a binary linked without `libtorch_cuda.so` loads but reports none.
    fn cuda_support(&self) -> Result<(), String> {
        if !cfg!(feature = "cuda") {
            Err("the pytorch runtime was built without CUDA (cargo feature `cuda`)".into())
        } else if !tch::Cuda::is_available() {
            Err("libtorch sees no CUDA device (libtorch_cuda.so not linked, or no driver)".into())
        } else {
            Ok(())
        }
    }

    fn load(&self, spec: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError> {
        let load_error = |reason: String| RuntimeError::Load { path: spec.model_path.clone(), reason };
        let signature = spec.declared.clone();
        if signature.inputs.is_empty() || signature.outputs.is_empty() {
            return Err(load_error(
                "a TorchScript file carries no signature: declare every `input` and `output` with `data_type` and \
                 `dims` in config.pbtxt"
                    .into(),
            ));
        }
        for tensor in signature.inputs.iter().chain(&signature.outputs) {
            convert::kind(tensor.datatype).map_err(|e| load_error(format!("`{}`: {e}", tensor.name)))?;
        }
        let device = match spec.device {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(ordinal) => {
                if !tch::Cuda::is_available() || i64::from(ordinal) >= tch::Cuda::device_count() {
                    return Err(RuntimeError::DeviceUnavailable(
                        spec.device,
                        "libtorch sees no such CUDA device (or was built without CUDA)".into(),
                    ));
                }
                tch::Device::Cuda(ordinal as usize)
            }
        };
        if spec.intra_op_threads > 0 {
            // libtorch's intra-op pool is process-wide: the first model sets it.
            let threads = i32::try_from(spec.intra_op_threads).unwrap_or(i32::MAX);
            self.threads.call_once(|| tch::set_num_threads(threads));
        }
        let mut module =
            tch::CModule::load_on_device(&spec.model_path, device).map_err(|e| load_error(e.to_string()))?;
        module.set_eval();
        Ok(Box::new(TorchScript { module, device, signature }))
    }
}

/// One instance of a TorchScript module.
struct TorchScript {
    module: tch::CModule,
    device: tch::Device,
    signature: ModelSignature,
}

impl Runtime for TorchScript {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        tch::no_grad(|| {
            let args = inputs
                .iter()
                .map(|t| convert::to_torch(t, self.device).map(tch::IValue::Tensor))
                .collect::<Result<Vec<_>, _>>()?;
            let result = self.module.forward_is(&args).map_err(|e| device_failure(self.device, e.to_string()))?;
            let tensors = convert::flatten(result)?;
            if tensors.len() != self.signature.outputs.len() {
                return Err(RuntimeError::Execution(format!(
                    "the module returned {} tensors; config.pbtxt declares {} outputs",
                    tensors.len(),
                    self.signature.outputs.len()
                )));
            }
            tensors.iter().zip(&self.signature.outputs).map(|(t, spec)| convert::from_torch(t, spec)).collect()
        })
    }
}

/// What a failed run means for the device: on a GPU, a synchronisation that fails too says the CUDA context is
/// unusable (a sticky error: every later call fails), so the instance must stop ([`RuntimeError::DeviceFault`]);
/// one that succeeds says the device recovered (out of memory for one batch, say).
fn device_failure(device: tch::Device, message: String) -> RuntimeError {
    let tch::Device::Cuda(ordinal) = device else {
        return RuntimeError::Execution(message);
    };
    // tch panics when libtorch throws, as synchronising a failed context does.
    match std::panic::catch_unwind(|| tch::Cuda::synchronize(ordinal as i64)) {
        Ok(()) => RuntimeError::Execution(message),
        Err(_) => RuntimeError::DeviceFault(format!("{message} (the CUDA context is unusable)")),
    }
}
