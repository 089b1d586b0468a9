//! The model manager: which models exist, which versions are loaded, and whether the server is ready.
//!
//! Loading is blocking work (reading files, building sessions) and runs off the async runtime; the request
//! path only takes a read lock to clone an `Arc<ModelVersion>`. A model that fails to load is recorded with
//! its reason and never affects the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferroserve_runtime::{LoadSpec, RuntimeLoader};
use parking_lot::RwLock;

use crate::InferError;
use crate::config::{InstanceGroup, InstanceKind};
use crate::instance::{InstancePool, PoolSpec};
use crate::model::{ModelVersion, VersionParts};
use crate::repository::{ModelSource, Repository};
use crate::request::{InferRequest, InferResponse};
use crate::setup::{batch_policy, complete_config, instance_devices, select_versions};
use crate::stats::ModelStats;

/// Engine-wide defaults, used where a model's config is silent.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// `max_batch_size` for a model whose every input and output has a variable first dim.
    pub default_max_batch_size: u32,
    /// Requests that may queue per model version before new ones get `Overloaded`.
    pub default_queue_capacity: usize,
    /// Instances per model version when the config has no `instance_group`.
    pub default_instance_count: u32,
    /// Intra-op threads per instance (0 = backend default).
    pub intra_op_threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            default_max_batch_size: 64,
            default_queue_capacity: 1024,
            default_instance_count: 1,
            intra_op_threads: 1,
        }
    }
}

/// State of one version.
#[derive(Debug, Clone)]
pub enum VersionState {
    /// Being loaded.
    Loading,
    /// Serving.
    Ready(Arc<ModelVersion>),
    /// Failed to load, with the reason.
    Unavailable(String),
}

/// Everything known about one model.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Model name.
    pub name: String,
    /// Versions the policy selected, by number.
    pub versions: BTreeMap<u64, VersionState>,
    /// A model-level failure (bad config, no versions, unknown platform).
    pub error: Option<String>,
    /// Whether the model is being loaded as a whole.
    pub loading: bool,
}

impl ModelEntry {
    /// Ready when loaded without errors and every selected version serves.
    pub fn is_ready(&self) -> bool {
        !self.loading
            && self.error.is_none()
            && !self.versions.is_empty()
            && self.versions.values().all(|v| matches!(v, VersionState::Ready(_)))
    }

    /// The ready versions, oldest first.
    pub fn ready_versions(&self) -> impl DoubleEndedIterator<Item = &Arc<ModelVersion>> + '_ {
        self.versions.values().filter_map(|v| match v {
            VersionState::Ready(m) => Some(m),
            _ => None,
        })
    }

    /// The newest ready version.
    pub fn latest_ready(&self) -> Option<&Arc<ModelVersion>> {
        self.ready_versions().next_back()
    }

    /// A human-readable state (`READY`, `LOADING`, `UNAVAILABLE`) and reason, as the repository index shows.
    pub fn state(&self) -> (&'static str, String) {
        if self.loading {
            ("LOADING", String::new())
        } else if let Some(e) = &self.error {
            ("UNAVAILABLE", e.clone())
        } else if self.is_ready() {
            ("READY", String::new())
        } else {
            let reason = self
                .versions
                .iter()
                .filter_map(|(v, s)| match s {
                    VersionState::Unavailable(r) => Some(format!("version {v}: {r}")),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("; ");
            ("UNAVAILABLE", reason)
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, or empty for a model-level row (a model that failed before any version).
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is not ready.
    pub reason: String,
}

/// Owns every model and routes requests to versions.
pub struct ModelManager {
    repository: Repository,
    loaders: Vec<Arc<dyn RuntimeLoader>>,
    options: EngineOptions,
    models: RwLock<BTreeMap<String, Arc<ModelEntry>>>,
    initial_load_done: AtomicBool,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager").field("repository", &self.repository).finish_non_exhaustive()
    }
}

impl ModelManager {
    /// A manager over `repository` that loads models with `loaders`. Nothing is loaded yet.
    pub fn new(repository: Repository, loaders: Vec<Arc<dyn RuntimeLoader>>, options: EngineOptions) -> Self {
        ModelManager {
            repository,
            loaders,
            options,
            models: RwLock::new(BTreeMap::new()),
            initial_load_done: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Loads every model of the repository (blocking). Failures are recorded per model.
    pub fn load_all(&self) -> Result<(), InferError> {
        let names = self.repository.model_names().map_err(|e| {
            self.initial_load_done.store(true, Ordering::SeqCst);
            InferError::Internal(format!("cannot list the model repository: {e}"))
        })?;
        {
            let mut models = self.models.write();
            for name in &names {
                models.insert(name.clone(), Arc::new(loading_entry(name)));
            }
        }
        for name in &names {
            // Errors are recorded in the entry; keep loading the others.
            let _ = self.load_model(name);
        }
        self.initial_load_done.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Loads (or reloads) one model by name (blocking).
    pub fn load_model(&self, name: &str) -> Result<(), InferError> {
        let known = self.repository.model_names().map_err(|e| InferError::Internal(e.to_string()))?;
        if !known.iter().any(|n| n == name) {
            return Err(InferError::NotFound(format!("model `{name}` is not in the model repository")));
        }
        self.models.write().insert(name.to_string(), Arc::new(loading_entry(name)));
        let entry = self.build_entry(name);
        let result = match entry.state() {
            ("READY", _) => Ok(()),
            (_, reason) => {
                tracing::error!(model = name, %reason, "model failed to load");
                Err(InferError::Internal(format!("failed to load model `{name}`: {reason}")))
            }
        };
        if entry.is_ready() {
            tracing::info!(model = name, versions = ?entry.versions.keys().collect::<Vec<_>>(), "model ready");
        }
        self.models.write().insert(name.to_string(), Arc::new(entry));
        result
    }

    /// Unloads a model: new requests get 404; in-flight ones finish on the instances.
    pub fn unload_model(&self, name: &str) -> Result<(), InferError> {
        match self.models.write().remove(name) {
            Some(_) => Ok(()),
            None => Err(InferError::NotFound(format!("model `{name}` is not loaded"))),
        }
    }

    fn build_entry(&self, name: &str) -> ModelEntry {
        let mut entry = ModelEntry { name: name.to_string(), versions: BTreeMap::new(), error: None, loading: false };
        let source = match self.repository.read_model(name) {
            Ok(s) => s,
            Err(e) => {
                entry.error = Some(e.to_string());
                return entry;
            }
        };
        let selected = select_versions(&source);
        if selected.is_empty() {
            entry.error = Some(format!("no version directory matches the version policy in {}", source.dir.display()));
            return entry;
        }
        let loader = match self.pick_loader(&source) {
            Ok(l) => l,
            Err(e) => {
                entry.error = Some(e);
                return entry;
            }
        };
        for version in selected {
            let state = match self.load_version(&source, version, &loader) {
                Ok(v) => VersionState::Ready(Arc::new(v)),
                Err(reason) => VersionState::Unavailable(reason),
            };
            entry.versions.insert(version, state);
        }
        entry
    }

    fn pick_loader(&self, source: &ModelSource) -> Result<Arc<dyn RuntimeLoader>, String> {
        let config = &source.config;
        let wanted = config.platform.clone().or_else(|| {
            config.backend.as_deref().map(|b| match b {
                "onnxruntime" => "onnxruntime_onnx".to_string(),
                "pytorch" => "pytorch_libtorch".to_string(),
                other => other.to_string(),
            })
        });
        if let Some(platform) = wanted {
            return self
                .loaders
                .iter()
                .find(|l| l.platform() == platform)
                .cloned()
                .ok_or_else(|| format!("platform `{platform}` is not supported by this build"));
        }
        let first = source.versions.first().map(|v| v.dir.clone()).unwrap_or_default();
        self.loaders
            .iter()
            .find(|l| {
                let file = config.default_model_filename.as_deref().unwrap_or(l.default_model_filename());
                first.join(file).is_file()
            })
            .cloned()
            .ok_or_else(|| format!("no model file that this build can load in {}", first.display()))
    }

    fn load_version(
        &self,
        source: &ModelSource,
        version: u64,
        loader: &Arc<dyn RuntimeLoader>,
    ) -> Result<ModelVersion, String> {
        let dir = source
            .versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.dir.clone())
            .ok_or_else(|| format!("version {version} has no directory"))?;
        let file = source.config.default_model_filename.as_deref().unwrap_or(loader.default_model_filename());
        let model_path = dir.join(file);
        if !model_path.is_file() {
            return Err(format!("{} does not exist", model_path.display()));
        }
        let intra_op_threads = source
            .config
            .parameters
            .get("intra_op_thread_count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.options.intra_op_threads);
        let groups = if source.config.instance_groups.is_empty() {
            vec![InstanceGroup { count: self.options.default_instance_count, kind: InstanceKind::Cpu, gpus: vec![] }]
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
        let (signature, config, reshapes) =
            complete_config(source, loader.platform(), signature, groups, &self.options)?;
        let (policy, scheduling) = batch_policy(&config, &self.options);
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

    /// True once the initial load finished, every model is ready and no shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.initial_load_done.load(Ordering::SeqCst)
            && !self.shutting_down.load(Ordering::SeqCst)
            && self.models.read().values().all(|m| m.is_ready())
    }

    /// Marks the server as draining: readiness turns false, requests already accepted still run.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// A copy of every model entry (for the index and stats).
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.models.read().values().cloned().collect()
    }

    /// The repository index: one row per version (or per model that has none), optionally ready ones only.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows = Vec::new();
        for entry in self.entries() {
            let (state, reason) = entry.state();
            if ready_only && state != "READY" {
                continue;
            }
            if entry.versions.is_empty() {
                rows.push(IndexEntry { name: entry.name.clone(), version: String::new(), state, reason });
            }
            for (n, v) in &entry.versions {
                let (state, reason) = match v {
                    VersionState::Ready(_) => ("READY", String::new()),
                    VersionState::Loading => ("LOADING", String::new()),
                    VersionState::Unavailable(r) => ("UNAVAILABLE", r.clone()),
                };
                rows.push(IndexEntry { name: entry.name.clone(), version: n.to_string(), state, reason });
            }
        }
        rows
    }

    /// The ready versions whose statistics a stats request covers: every model (`name` None), one model,
    /// or one version of it (`NotFound` for unknown names or versions).
    pub fn statistics_scope(
        &self,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<Arc<ModelVersion>>, InferError> {
        match (name, version) {
            (None, _) => {
                Ok(self.entries().iter().flat_map(|e| e.ready_versions().cloned().collect::<Vec<_>>()).collect())
            }
            (Some(name), None) => Ok(self.entry(name)?.ready_versions().cloned().collect()),
            (Some(name), Some(version)) => Ok(vec![self.version(name, Some(version))?]),
        }
    }

    /// The entry for `name`, or `NotFound`.
    pub fn entry(&self, name: &str) -> Result<Arc<ModelEntry>, InferError> {
        self.models.read().get(name).cloned().ok_or_else(|| InferError::NotFound(format!("unknown model: `{name}`")))
    }

    /// Whether a model (or one version) is ready; `NotFound` for unknown names or versions.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> Result<bool, InferError> {
        let entry = self.entry(name)?;
        match version {
            None => Ok(entry.latest_ready().is_some() && !entry.loading),
            Some(v) => {
                let number = parse_version(name, v)?;
                match entry.versions.get(&number) {
                    Some(VersionState::Ready(_)) => Ok(true),
                    Some(_) => Ok(false),
                    None => Err(unknown_version(name, v)),
                }
            }
        }
    }

    /// The ready version a request for (`name`, `version`) goes to.
    pub fn version(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, InferError> {
        let entry = self.entry(name)?;
        match version {
            None => entry.latest_ready().cloned().ok_or_else(|| not_ready(&entry)),
            Some(v) => {
                let number = parse_version(name, v)?;
                match entry.versions.get(&number) {
                    Some(VersionState::Ready(m)) => Ok(Arc::clone(m)),
                    Some(VersionState::Loading) => {
                        Err(InferError::NotReady(format!("model `{name}` version {v} is still loading")))
                    }
                    Some(VersionState::Unavailable(reason)) => {
                        Err(InferError::NotReady(format!("model `{name}` version {v} is unavailable: {reason}")))
                    }
                    None => Err(unknown_version(name, v)),
                }
            }
        }
    }

    /// Runs one request.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        let version = self.version(&request.model_name, request.model_version.as_deref())?;
        version.infer(request).await
    }
}

fn loading_entry(name: &str) -> ModelEntry {
    ModelEntry { name: name.to_string(), versions: BTreeMap::new(), error: None, loading: true }
}

fn not_ready(entry: &ModelEntry) -> InferError {
    match entry.state() {
        ("LOADING", _) => InferError::NotReady(format!("model `{}` is still loading", entry.name)),
        (_, reason) => InferError::NotReady(format!("model `{}` is not ready: {reason}", entry.name)),
    }
}

fn parse_version(name: &str, version: &str) -> Result<u64, InferError> {
    version.parse::<u64>().map_err(|_| unknown_version(name, version))
}

fn unknown_version(name: &str, version: &str) -> InferError {
    InferError::NotFound(format!("unknown version `{version}` of model `{name}`"))
}
