//! The model manager: which models exist, which versions serve, and whether the server is ready.
//!
//! - [`entry`]: the typed state of one model (phase, versions) and its repository-index rows;
//! - [`build`]: building a version's instance pool from its files (blocking work, off the async runtime);
//! - [`lifecycle`]: start-up, load, reload, unload and polling, serialized per model.
//!
//! The request path only takes a read lock to clone an `Arc<ModelVersion>` out of an immutable entry. A model
//! that fails to load is recorded with its reason and never affects the others.

mod build;
pub mod entry;
mod lifecycle;
mod shadow;
pub mod traffic;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferroserve_runtime::RuntimeLoader;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

pub use entry::{IndexEntry, IndexState, ModelEntry, ModelPhase, VersionState};
pub use lifecycle::{ModelControlMode, StartupModels};

use crate::InferError;
use crate::gpus::Gpus;
use crate::model::ModelVersion;
use crate::repository::Repository;
use crate::request::{InferRequest, InferResponse};

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
    /// Longest wait, when a version is replaced or unloaded, for requests still holding it to finish.
    pub retire_timeout: std::time::Duration,
    /// Models loading at once (start-up and polls).
    pub load_threads: usize,
    /// The GPUs instances may be placed on.
    pub gpus: Gpus,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            default_max_batch_size: 64,
            default_queue_capacity: 1024,
            default_instance_count: 1,
            intra_op_threads: 1,
            retire_timeout: std::time::Duration::from_secs(30),
            load_threads: 4,
            gpus: Gpus::default(),
        }
    }
}

/// Owns every model and routes requests to versions.
pub struct ModelManager {
    repository: Repository,
    loaders: Vec<Arc<dyn RuntimeLoader>>,
    options: EngineOptions,
    control: ModelControlMode,
    models: RwLock<BTreeMap<String, Arc<ModelEntry>>>,
    /// One lock per model name: load, reload and unload of a model run one at a time, in arrival order.
    lifecycles: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the start-up loads are done.
    started: AtomicBool,
    shutting_down: AtomicBool,
    /// Turns true with `shutting_down`: a load waiting on its repository (a hung store can take minutes) gives
    /// up then, so that an admin load request does not hold the drain.
    stopping: watch::Sender<bool>,
    /// Why the repository could not be read (start-up or a poll); the server is not ready while set.
    repository_failure: Mutex<Option<String>>,
    /// The readiness every health endpoint reports, republished after every change.
    readiness: watch::Sender<bool>,
    /// Traffic policies set through the API (or by a rollback), which outlive reloads until cleared.
    traffic_overrides: Mutex<HashMap<String, crate::routing::TrafficPolicy>>,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager").field("repository", &self.repository).finish_non_exhaustive()
    }
}

/// How long the repository index waits to list the repository for models never loaded.
pub const INDEX_LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl ModelManager {
    /// A manager over `repository` that loads models with `loaders`. Nothing is loaded until
    /// [`ModelManager::start`].
    pub fn new(
        repository: Repository,
        loaders: Vec<Arc<dyn RuntimeLoader>>,
        options: EngineOptions,
        control: ModelControlMode,
    ) -> Self {
        ModelManager {
            repository,
            loaders,
            options,
            control,
            models: RwLock::new(BTreeMap::new()),
            lifecycles: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            stopping: watch::channel(false).0,
            repository_failure: Mutex::new(None),
            readiness: watch::channel(false).0,
            traffic_overrides: Mutex::new(HashMap::new()),
        }
    }

    /// The model control mode.
    pub fn control_mode(&self) -> ModelControlMode {
        self.control
    }

    /// The GPUs that failed in a way only a restart clears (see [`Gpus`]), and why: while there is one, the server
    /// reports itself not live.
    pub fn device_faults(&self) -> Vec<(u32, String)> {
        self.options.gpus.faults()
    }

    /// True once start-up finished, the repository is readable, every model that should serve is ready,
    /// and no shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
            && !self.shutting_down.load(Ordering::SeqCst)
            && self.repository_failure.lock().is_none()
            && self.models.read().values().filter(|m| m.is_wanted()).all(|m| m.is_ready())
    }

    /// Readiness as a watch: the gRPC health service's `Watch` follows it.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.readiness.subscribe()
    }

    /// Recomputes readiness and wakes watchers. Called after every state change (a model's readiness may
    /// change while the server's does not: per-model health watchers look again too).
    fn publish(&self) {
        // Computed under the watch's own lock: publishes from a lifecycle step and from an instance thread (a
        // pool that failed) cannot land in the opposite order of what they read.
        self.readiness.send_modify(|ready| *ready = self.is_ready());
    }

    /// Why the repository could not be read, if it could not.
    pub fn repository_failure(&self) -> Option<String> {
        self.repository_failure.lock().clone()
    }

    /// Marks the server as draining: readiness turns false, requests already accepted still run, and a load
    /// still reading its repository gives up (see `ModelManager::unless_stopping`).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stopping.send_replace(true);
        self.publish();
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// A copy of every model entry (for the index and stats).
    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.models.read().values().cloned().collect()
    }

    /// The models that serve or should serve (not unloaded), for listings such as KServe v1 `/v1/models`.
    pub fn wanted_entries(&self) -> Vec<Arc<ModelEntry>> {
        self.models.read().values().filter(|m| m.is_wanted()).cloned().collect()
    }

    /// The repository index: one row per version (or per model that has none), optionally ready ones only.
    /// As in Triton, models in the repository that were never loaded are listed too, without a state
    /// (explicit mode: what can be loaded); a repository that cannot be listed within [`INDEX_LISTING_TIMEOUT`]
    /// just leaves them out, so the index answers from the server's own state while a store is down or hangs
    /// (it used to wait for the store's retries, and never answered while a store hung).
    pub async fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows: Vec<IndexEntry> = self
            .entries()
            .iter()
            .flat_map(|entry| entry.index_rows())
            .filter(|row| !ready_only || row.state == IndexState::Ready)
            .collect();
        let listing = async {
            // An archive not yet unpacked is left to the load that unpacks it: a listing cut off by the timeout
            // would throw its download away.
            if ready_only || !self.repository.lists_without_side_effects() {
                return None;
            }
            match tokio::time::timeout(INDEX_LISTING_TIMEOUT, self.repository.model_names()).await {
                Ok(Ok(names)) => Some(names),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the repository index lists loaded models only: the repository cannot be listed");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        seconds = INDEX_LISTING_TIMEOUT.as_secs(),
                        "the repository index lists loaded models only: listing the repository took too long"
                    );
                    None
                }
            }
        };
        if let Some(names) = listing.await {
            let known = self.models.read();
            for name in names.into_iter().filter(|n| !known.contains_key(n)) {
                rows.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: IndexState::NotLoaded,
                    reason: String::new(),
                });
            }
            rows.sort_by(|a, b| a.name.cmp(&b.name));
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

    /// The entry for `name`, or `NotFound` (also for unloaded models: they no longer answer).
    pub fn entry(&self, name: &str) -> Result<Arc<ModelEntry>, InferError> {
        self.models.read().get(name).filter(|e| e.is_wanted()).cloned().ok_or_else(|| unknown_model(name))
    }

    /// Whether a model (or one version) is ready; `NotFound` for unknown names or versions.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> Result<bool, InferError> {
        let entry = self.entry(name)?;
        match version {
            None => Ok(entry.latest_ready().is_some()),
            Some(v) => {
                let number = parse_version(v)?;
                match entry.versions.get(&number) {
                    Some(VersionState::Ready(m)) => Ok(m.failed().is_none()),
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
                let number = parse_version(v)?;
                match entry.versions.get(&number) {
                    Some(VersionState::Ready(m)) => match m.failed() {
                        None => Ok(Arc::clone(m)),
                        Some(reason) => {
                            Err(InferError::NotReady(format!("model `{name}` version {v} is unavailable: {reason}")))
                        }
                    },
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

    /// Bytes `request` will hold while it runs, beside its body (see [`crate::memory`]): on the version it
    /// names, or the most any ready version of its model would hold, since routing picks one later. 0 when the
    /// model is unknown or not ready (the request fails before it holds anything).
    pub fn working_bytes(&self, request: &InferRequest) -> usize {
        let Ok(entry) = self.entry(&request.model_name) else { return 0 };
        let named = request.model_version.as_deref().and_then(|v| parse_version(v).ok());
        let input_bytes = request.inputs.iter().map(|i| i.tensor.memory_size()).sum();
        entry
            .ready_versions()
            .filter(|v| named.is_none_or(|n| n == v.version))
            .map(|v| v.working_bytes(input_bytes))
            .max()
            .unwrap_or(0)
    }

    /// Refuses a request whose input `input` claims more elements than any version it may reach takes (the
    /// largest batch times fixed dims), before a decoder allocates a handle per element: a 64 MiB body of empty
    /// strings claims 16 Mi elements and would take 512 MiB of handles, for a model that takes 32. Passes where
    /// a dim is free, and where the model, version or input is unknown (the request then fails as usual).
    pub fn check_input_elements(
        &self,
        model: &str,
        version: Option<&str>,
        input: &str,
        elements: usize,
    ) -> Result<(), InferError> {
        let Ok(entry) = self.entry(model) else { return Ok(()) };
        let named = match version.map(parse_version) {
            // Not a version: the request fails as usual (400), not for its size.
            Some(Err(_)) => return Ok(()),
            named => named.and_then(Result::ok),
        };
        let mut most: Option<usize> = None;
        for v in entry.ready_versions().filter(|v| named.is_none_or(|n| n == v.version)) {
            let Some(bound) = v.max_input_elements(input) else { return Ok(()) };
            most = Some(most.map_or(bound, |m| m.max(bound)));
        }
        match most {
            Some(most) if elements > most => Err(InferError::invalid(format!(
                "input `{input}` has {elements} elements; model `{model}` takes at most {most} in one request"
            ))),
            _ => Ok(()),
        }
    }

    /// Runs one request.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        let version = self.version(&request.model_name, request.model_version.as_deref())?;
        version.infer(request).await
    }
}

fn not_ready(entry: &ModelEntry) -> InferError {
    match entry.state() {
        (IndexState::Loading, _) => InferError::NotReady(format!("model `{}` is still loading", entry.name)),
        (_, reason) => InferError::NotReady(format!("model `{}` is not ready: {reason}", entry.name)),
    }
}

/// A version that is not a number is the client's mistake (400 / INVALID_ARGUMENT), in Triton's words, which
/// its client programs match on; a number that names no version is [`unknown_version`].
fn parse_version(version: &str) -> Result<u64, InferError> {
    // Digits only: `u64::from_str` takes a leading `+` too.
    let digits = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| version.parse::<u64>().ok()).flatten().ok_or_else(|| {
        InferError::invalid(format!("failed to get model version from specified version string '{version}'"))
    })
}

/// Triton's wording, which client scripts match on.
fn unknown_model(name: &str) -> InferError {
    InferError::NotFound(format!("Request for unknown model: '{name}' is not found"))
}

/// Triton's wording, which client scripts match on.
fn unknown_version(name: &str, version: &str) -> InferError {
    InferError::NotFound(format!("Request for unknown model: '{name}' version {version} is not found"))
}

#[cfg(test)]
mod tests;
