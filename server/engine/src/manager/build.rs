//! Building a version: choose the runtime for the model's platform, start its instance pool from the
//! version's local files, and complete the configuration from the model's signature. Blocking work: the
//! lifecycle runs it off the async runtime.

use std::path::Path;
use std::sync::Arc;

use ferroserve_runtime::{LoadSpec, ModelSignature, RuntimeLoader, TensorSpec};

use crate::config::{InstanceGroup, InstanceKind, TensorConfig};
use crate::instance::{FailureHook, InstancePool, PoolSpec};
use crate::manager::EngineOptions;
use crate::metrics::VersionMetrics;
use crate::model::{ModelVersion, VersionParts};
use crate::repository::ModelSource;
use crate::setup::{batch_policy, complete_config, instance_devices, resolve_groups};
use crate::stats::ModelStats;

/// Most intra-op threads one instance may ask for: each is an OS thread, and a config from a repository must not
/// be able to start an unbounded number.
pub(super) const MAX_INTRA_OP_THREADS: usize = 256;

/// Most instances one model version may have, over all its instance groups and their GPUs: each is a loaded
/// copy of the model and an OS thread.
pub(super) const MAX_INSTANCES: usize = 1024;

/// The runtime for a model: the one its config names (`platform` or `backend`), else the first whose default
/// model file the newest version holds.
pub(super) fn pick_loader(
    loaders: &[Arc<dyn RuntimeLoader>],
    source: &ModelSource,
) -> Result<Arc<dyn RuntimeLoader>, String> {
    let config = &source.config;
    let wanted = config.platform.clone().or_else(|| {
        config.backend.as_deref().map(|b| match b {
            "onnxruntime" => "onnxruntime_onnx".to_string(),
            "pytorch" | "libtorch" => "pytorch_libtorch".to_string(),
            "candle" | "safetensors" => "candle_safetensors".to_string(),
            other => other.to_string(),
        })
    });
    if let Some(platform) = wanted {
        return loaders
            .iter()
            .find(|l| l.platform() == platform)
            .cloned()
            .ok_or_else(|| format!("platform `{platform}` is not supported by this build{}", feature_hint(&platform)));
    }
    let newest = source.versions.last().ok_or_else(|| format!("no version directory in {}", source.location))?;
    let extension = |name: &str| name.rsplit_once('.').map(|(_, e)| e.to_string());
    loaders
        .iter()
        .find(|l| match config.default_model_filename.as_deref() {
            // A custom file name: the loader whose own file has the same extension (`.onnx`, `.pt`, ...).
            Some(file) => {
                newest.files.iter().any(|f| f == file) && extension(file) == extension(l.default_model_filename())
            }
            None => l.recognizes(&newest.files),
        })
        .cloned()
        .ok_or_else(|| {
            let known = KNOWN_FILES.iter().find(|(file, _)| newest.files.iter().any(|f| f == file));
            let hint = known.map(|(_, platform)| feature_hint(platform)).unwrap_or_default();
            format!("no model file that this build can load in {}/{}{hint}", source.location, newest.version)
        })
}

/// Model files of the formats ferroserve knows, with their platform: a build without the runtime says which
/// feature it lacks instead of a bare "cannot load".
const KNOWN_FILES: [(&str, &str); 4] = [
    ("model.onnx", "onnxruntime_onnx"),
    ("model.pt", "pytorch_libtorch"),
    ("model.safetensors", "candle_safetensors"),
    ("model.safetensors.index.json", "candle_safetensors"),
];

fn feature_hint(platform: &str) -> String {
    let feature = match platform {
        "onnxruntime_onnx" => "onnx",
        "pytorch_libtorch" => "torch",
        "candle_safetensors" => "candle",
        _ => return String::new(),
    };
    format!(" (a `{platform}` model needs a ferroserve built with the cargo feature `{feature}`)")
}

/// Starts one version from its local directory `dir`.
pub(super) fn build_version(
    source: &ModelSource,
    version: u64,
    dir: &Path,
    loader: &Arc<dyn RuntimeLoader>,
    options: &EngineOptions,
    on_failed: &FailureHook,
) -> Result<ModelVersion, String> {
    let file = source.config.default_model_filename.as_deref().unwrap_or(loader.default_model_filename());
    let model_path = dir.join(file);
    let files = source.versions.iter().find(|v| v.version == version).map(|v| v.files.as_slice()).unwrap_or_default();
    // A model may be several files the loader knows (safetensors shards and their index) instead of one.
    let recognized = source.config.default_model_filename.is_none() && loader.recognizes(files);
    if !model_path.is_file() && !recognized {
        return Err(format!("{}/{version}/{file} does not exist", source.location));
    }
    let intra_op_threads = match source.config.parameters.get("intra_op_thread_count") {
        None => options.intra_op_threads,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n <= MAX_INTRA_OP_THREADS => n,
            _ => {
                return Err(format!(
                    "parameter intra_op_thread_count is `{v}`; it must be a whole number from 0 (the runtime's \
                     default) to {MAX_INTRA_OP_THREADS}"
                ));
            }
        },
    };
    let groups = if source.config.instance_groups.is_empty() {
        vec![InstanceGroup { count: options.default_instance_count, kind: InstanceKind::Auto, gpus: vec![] }]
    } else {
        source.config.instance_groups.clone()
    };
    let groups = resolve_groups(&groups, &options.gpus, loader.cuda_support())?;
    let max_batch_size = source.config.max_batch_size.unwrap_or(0);
    let declare = |tensors: &[TensorConfig]| -> Vec<TensorSpec> {
        tensors
            .iter()
            .filter_map(|t| {
                let datatype = t.datatype?;
                let own = t.reshape.clone().unwrap_or_else(|| t.dims.clone());
                let dims = if max_batch_size > 0 { std::iter::once(-1).chain(own).collect() } else { own };
                Some(TensorSpec { name: t.name.clone(), datatype, dims })
            })
            .collect()
    };
    let declared = ModelSignature { inputs: declare(&source.config.inputs), outputs: declare(&source.config.outputs) };
    let devices = instance_devices(&groups);
    if devices.len() > MAX_INSTANCES {
        return Err(format!(
            "the instance groups ask for {} instances; at most {MAX_INSTANCES} per model version",
            devices.len()
        ));
    }
    let instances = devices
        .into_iter()
        .map(|device| LoadSpec {
            declared: declared.clone(),
            max_batch_size,
            parameters: source.config.parameters.clone().into_iter().collect(),
            gpu_accelerators: source.config.gpu_accelerators.clone(),
            version_dir: dir.to_path_buf(),
            ..LoadSpec::new(model_path.clone(), device, intra_op_threads)
        })
        .collect();
    let stats = Arc::new(ModelStats::with_metrics(VersionMetrics::new(&source.name, version)));
    let (loaded, signature) = InstancePool::start(PoolSpec {
        label: format!("{}:{version}", source.name),
        loader: Arc::clone(loader),
        instances,
        stats: Arc::clone(&stats),
        gpus: options.gpus.clone(),
        on_failed: Some(on_failed.clone()),
    })
    .map_err(|e| e.to_string())?;
    // Where the config is the signature (TorchScript), a missing max_batch_size means 0, as in Triton: the
    // declared dims are the whole shape, not dims to batch over.
    let unbatched;
    let source = if source.config.max_batch_size.is_none() && loader.signature_from_config() {
        let mut copy = source.clone();
        copy.config.max_batch_size = Some(0);
        unbatched = copy;
        &unbatched
    } else {
        source
    };
    let (signature, mut config, reshapes) = complete_config(source, loader.platform(), signature, groups, options)?;
    config.backend = Some(loader.backend().to_string());
    config.default_model_filename.get_or_insert_with(|| file.to_string());
    let (policy, scheduling) = batch_policy(&config, options)?;
    let pool = loaded.serve(policy);
    Ok(ModelVersion::new(VersionParts {
        name: source.name.clone(),
        version,
        platform: loader.platform().to_string(),
        signature,
        config,
        scheduling,
        reshapes,
        labels: source.labels.clone(),
        stats,
        pool,
    }))
}
