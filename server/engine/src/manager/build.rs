//! Building a version: choose the runtime for the model's platform, start its instance pool from the
//! version's local files, and complete the configuration from the model's signature. Blocking work: the
//! lifecycle runs it off the async runtime.

use std::path::Path;
use std::sync::Arc;

use ferroserve_runtime::{LoadSpec, RuntimeLoader};

use crate::config::{InstanceGroup, InstanceKind};
use crate::instance::{InstancePool, PoolSpec};
use crate::manager::EngineOptions;
use crate::model::{ModelVersion, VersionParts};
use crate::repository::ModelSource;
use crate::setup::{batch_policy, complete_config, instance_devices};
use crate::stats::ModelStats;

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
            "pytorch" => "pytorch_libtorch".to_string(),
            other => other.to_string(),
        })
    });
    if let Some(platform) = wanted {
        return loaders
            .iter()
            .find(|l| l.platform() == platform)
            .cloned()
            .ok_or_else(|| format!("platform `{platform}` is not supported by this build"));
    }
    let newest = source.versions.last().ok_or_else(|| format!("no version directory in {}", source.location))?;
    loaders
        .iter()
        .find(|l| {
            let file = config.default_model_filename.as_deref().unwrap_or(l.default_model_filename());
            newest.files.iter().any(|f| f == file)
        })
        .cloned()
        .ok_or_else(|| format!("no model file that this build can load in {}/{}", source.location, newest.version))
}

/// Starts one version from its local directory `dir`.
pub(super) fn build_version(
    source: &ModelSource,
    version: u64,
    dir: &Path,
    loader: &Arc<dyn RuntimeLoader>,
    options: &EngineOptions,
) -> Result<ModelVersion, String> {
    let file = source.config.default_model_filename.as_deref().unwrap_or(loader.default_model_filename());
    let model_path = dir.join(file);
    if !model_path.is_file() {
        return Err(format!("{}/{version}/{file} does not exist", source.location));
    }
    let intra_op_threads = source
        .config
        .parameters
        .get("intra_op_thread_count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(options.intra_op_threads);
    let groups = if source.config.instance_groups.is_empty() {
        vec![InstanceGroup { count: options.default_instance_count, kind: InstanceKind::Cpu, gpus: vec![] }]
    } else {
        source.config.instance_groups.clone()
    };
    let instances = instance_devices(&groups)
        .into_iter()
        .map(|device| LoadSpec { model_path: model_path.clone(), device, intra_op_threads })
        .collect();
    let stats = Arc::new(ModelStats::default());
    let (loaded, signature) = InstancePool::start(PoolSpec {
        label: format!("{}:{version}", source.name),
        loader: Arc::clone(loader),
        instances,
        stats: Arc::clone(&stats),
    })
    .map_err(|e| e.to_string())?;
    let (signature, config, reshapes) = complete_config(source, loader.platform(), signature, groups, options)?;
    let (policy, scheduling) = batch_policy(&config, options);
    let pool = loaded.serve(policy);
    Ok(ModelVersion::new(VersionParts {
        name: source.name.clone(),
        version,
        platform: loader.platform().to_string(),
        signature,
        config,
        scheduling,
        reshapes,
        stats,
        pool,
    }))
}
