//! Weights loaded once per model version and shared by its instances.
//!
//! Every instance of a version loads on its own thread (`RuntimeLoader::load`), but the weights are the same
//! read-only tensors: the first instance reads the safetensors files, the others take a handle to the same
//! tensors. A candle tensor is a reference-counted handle to its storage, so the models that the instances
//! build from the shared map hold one copy between them: four instances of MiniLM hold 90 MB, not 360.
//!
//! The registry keeps only weak references: once the last instance of a version is dropped (unload, a new
//! version replacing it), its weights are freed. Files are identified by path, size and modification time,
//! so a version directory rewritten in place and reloaded gets the new weights, not the ones still held by
//! the instances it replaces.
//!
//! On CUDA every instance keeps its own copy: each has its own candle device (and stream), and candle refuses
//! to mix tensors of two devices in one operation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::SystemTime;

use candle_core::{DType, Tensor};
use ferroserve_runtime::RuntimeError;

use crate::files::load_error;

/// The tensors of one model version, by their names in the files, floating-point ones as F32 (the dtype the
/// models run in, so that building a model from them copies nothing).
#[derive(Debug)]
pub(crate) struct Weights {
    pub(crate) tensors: HashMap<String, Tensor>,
}

/// What makes two loads the same weights: the files as they are on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    files: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

/// One version's weights, or where they will be once loading finishes: whoever loads holds the slot's lock,
/// so the other instances of the version wait for that load instead of reading the files again.
type Slot = Arc<Mutex<Weak<Weights>>>;

static SHARED: LazyLock<Mutex<HashMap<Key, Slot>>> = LazyLock::new(Default::default);

impl Weights {
    /// The weights in `files` on the CPU: shared with any live instance that loaded the same files.
    pub(crate) fn shared_cpu(files: &[PathBuf]) -> Result<Arc<Weights>, RuntimeError> {
        let key = Key { files: files.iter().map(|f| identify(f)).collect::<Result<_, _>>()? };
        let slot = {
            let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget versions nobody holds any more (and that nobody is loading: the map is the slot's only owner).
            shared.retain(|_, slot| {
                Arc::strong_count(slot) > 1 || slot.lock().unwrap_or_else(PoisonError::into_inner).strong_count() > 0
            });
            Arc::clone(shared.entry(key).or_default())
        };
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(weights) = held.upgrade() {
            return Ok(weights);
        }
        let weights = Arc::new(Weights::read(files, &candle_core::Device::Cpu)?);
        *held = Arc::downgrade(&weights);
        Ok(weights)
    }

    /// Reads every file onto `device`; floating-point tensors become F32.
    pub(crate) fn read(files: &[PathBuf], device: &candle_core::Device) -> Result<Weights, RuntimeError> {
        let first = files.first().cloned().unwrap_or_default();
        // The files are read into memory: memory-mapping them would need `unsafe`, which the workspace denies.
        let mut tensors = HashMap::new();
        for path in files {
            let loaded = candle_core::safetensors::load(path, device).map_err(|e| load_error(path, e.to_string()))?;
            for (name, tensor) in loaded {
                let tensor = if tensor.dtype().is_float() && tensor.dtype() != DType::F32 {
                    tensor.to_dtype(DType::F32).map_err(|e| load_error(path, format!("tensor `{name}`: {e}")))?
                } else {
                    tensor
                };
                tensors.insert(name, tensor);
            }
        }
        if tensors.is_empty() {
            return Err(load_error(&first, "no tensors in the weights"));
        }
        Ok(Weights { tensors })
    }
}

fn identify(path: &Path) -> Result<(PathBuf, u64, Option<SystemTime>), RuntimeError> {
    let canonical = path.canonicalize().map_err(|e| load_error(path, e.to_string()))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| load_error(path, e.to_string()))?;
    Ok((canonical, meta.len(), meta.modified().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, value: f32) -> PathBuf {
        let path = dir.join("model.safetensors");
        let tensor = Tensor::full(value, (2, 3), &candle_core::Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), tensor)]), &path).unwrap();
        path
    }

    #[test]
    fn one_copy_while_held_and_a_fresh_read_once_released_or_rewritten() {
        let dir = std::env::temp_dir().join(format!("ferroserve-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write(&dir, 1.0);
        let a = Weights::shared_cpu(std::slice::from_ref(&path)).unwrap();
        let b = Weights::shared_cpu(std::slice::from_ref(&path)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.tensors["w"].id(), b.tensors["w"].id(), "the same tensor, not a copy");
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "the registry does not keep released weights alive");

        let held = Weights::shared_cpu(std::slice::from_ref(&path)).unwrap();
        // A file rewritten in place (another size here) is other weights, even while the old ones are held.
        let tensor = Tensor::full(2f32, (4, 3), &candle_core::Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), tensor)]), &path).unwrap();
        let fresh = Weights::shared_cpu(std::slice::from_ref(&path)).unwrap();
        assert!(!Arc::ptr_eq(&held, &fresh));
        assert_eq!(fresh.tensors["w"].dims(), [4, 3]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_loads_of_one_version_read_it_once() {
        let dir = std::env::temp_dir().join(format!("ferroserve-weights-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write(&dir, 3.0);
        let loads: Vec<Arc<Weights>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| Weights::shared_cpu(std::slice::from_ref(&path)).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(loads.iter().all(|w| Arc::ptr_eq(w, &loads[0])));
        assert_eq!(Arc::strong_count(&loads[0]), 8, "the registry holds no strong reference");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
