//! Start-up, load, reload, unload and polling: one serialized state machine per model.
//!
//! Every step of a model holds that model's lifecycle lock (a fair async mutex, so concurrent calls run in
//! arrival order and the last one wins). A reload builds the new versions beside the serving ones and swaps
//! the entry in one write; only then are the replaced versions retired: once no request holds them any more,
//! their queues close and their instance threads are joined. A reload that fails keeps the old versions
//! serving and records why. Unchanged versions (same files, same config) are kept, not rebuilt.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::InferError;
use crate::config::ModelConfig;
use crate::instance::FailureHook;
use crate::manager::build::{build_version, pick_loader};
use crate::manager::{IndexState, ModelEntry, ModelManager, ModelPhase, VersionState};
use crate::model::ModelVersion;
use crate::repository::RepositoryError;
use crate::setup::select_versions;

/// How models get loaded and unloaded (Triton's `--model-control-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelControlMode {
    /// Load every model at start-up; the repository API cannot load or unload.
    #[default]
    None,
    /// As `None`, then follow the repository: new models load, changed ones reload, removed ones unload.
    Poll,
    /// Load only the start-up models named; the repository API loads and unloads.
    Explicit,
}

impl ModelControlMode {
    /// The flag's spelling (`none`, `poll`, `explicit`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelControlMode::None => "none",
            ModelControlMode::Poll => "poll",
            ModelControlMode::Explicit => "explicit",
        }
    }
}

/// Which models start-up loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupModels {
    /// Every model in the repository.
    All,
    /// These models (explicit mode's `--load-model`).
    Named(Vec<String>),
}

/// Why a load failed, and what that means for retries.
struct Failure {
    reason: String,
    /// Fingerprint of the files that failed (`None`: they could not be listed).
    print: Option<u64>,
    /// The store was unreachable: worth retrying, and 503 / UNAVAILABLE to the caller.
    transient: bool,
}

impl Failure {
    /// A fault in the model's files (bad config, unloadable model): retried when the files change.
    fn in_files(reason: String, print: u64) -> Self {
        Failure { reason, print: Some(print), transient: false }
    }

    /// A load given up because the server began to shut down while it waited on the repository: 503 /
    /// UNAVAILABLE to its caller, and a serving model keeps serving until the drain ends.
    fn cancelled() -> Self {
        Failure { reason: CANCELLED.into(), print: None, transient: true }
    }
}

/// Why a load gave up when the server began to shut down.
const CANCELLED: &str = "load cancelled: the server is shutting down";

/// Why the repository could not be read at start-up; the server must not report ready.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the model repository {location}: {source}")]
pub struct StartupError {
    /// Where the repository is.
    pub location: String,
    /// What failed.
    #[source]
    pub source: RepositoryError,
}

impl ModelManager {
    /// Loads the start-up models (all of them, or the named ones), concurrently. Fails only when the
    /// repository cannot be listed; each model's own failure is recorded in its entry.
    pub async fn start(self: &Arc<Self>, models: StartupModels) -> Result<(), StartupError> {
        // Listed in every mode: explicit mode with no start-up model must still fail on an unreadable repository.
        let listed = match self.repository.model_names().await {
            Ok(names) => names,
            Err(source) => {
                let error = StartupError { location: self.repository.describe(), source };
                *self.repository_failure.lock() = Some(error.to_string());
                self.started.store(true, Ordering::SeqCst);
                self.publish();
                return Err(error);
            }
        };
        let names = match models {
            StartupModels::Named(names) => names,
            StartupModels::All => listed,
        };
        {
            let mut models = self.models.write();
            for name in &names {
                models.insert(name.clone(), Arc::new(ModelEntry::loading(name)));
            }
        }
        self.load_many(names).await;
        self.started.store(true, Ordering::SeqCst);
        self.publish();
        Ok(())
    }

    /// Loads models, at most `load_threads` at a time (Triton's `--model-load-thread-count`).
    async fn load_many(self: &Arc<Self>, names: Vec<String>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.options.load_threads.max(1)));
        let mut loads = tokio::task::JoinSet::new();
        for name in names {
            let (manager, permits) = (Arc::clone(self), Arc::clone(&permits));
            loads.spawn(async move {
                let _permit = permits.acquire().await;
                // Failures are recorded in the model's entry and logged.
                let _ = manager.load_model(&name, None).await;
            });
        }
        while loads.join_next().await.is_some() {}
    }

    /// The repository API's load: only in explicit mode (as in Triton). `config` is Triton's
    /// `parameters.config` override, already parsed, with its text.
    pub async fn request_load(
        self: &Arc<Self>,
        name: &str,
        config: Option<(ModelConfig, String)>,
    ) -> Result<(), InferError> {
        self.require_explicit("load")?;
        check_model_name(name)?;
        // In a task of its own: a caller that goes away (a client timeout) must not stop a lifecycle step
        // half-way and leave the model `Loading` for good.
        let (manager, name) = (Arc::clone(self), name.to_string());
        tokio::spawn(async move {
            let result = manager.load_model(&name, config).await;
            manager.forget_unknown(&name);
            result
        })
        .await
        .map_err(|e| InferError::Internal(format!("the load stopped: {e}")))?
    }

    /// The repository API's unload: only in explicit mode (as in Triton).
    pub async fn request_unload(self: &Arc<Self>, name: &str) -> Result<(), InferError> {
        self.require_explicit("unload")?;
        check_model_name(name)?;
        let (manager, name) = (Arc::clone(self), name.to_string());
        tokio::spawn(async move {
            let result = manager.unload_model(&name).await;
            manager.forget_unknown(&name);
            result
        })
        .await
        .map_err(|e| InferError::Internal(format!("the unload stopped: {e}")))?
    }

    /// Drops the lifecycle lock of a name that has no entry (a call for an unknown model), so calls with
    /// made-up names cannot grow the lock table without bound.
    fn forget_unknown(&self, name: &str) {
        let mut locks = self.lifecycles.lock();
        let unused = locks.get(name).is_some_and(|lock| Arc::strong_count(lock) == 1);
        if unused && !self.models.read().contains_key(name) {
            locks.remove(name);
        }
    }

    fn require_explicit(&self, what: &str) -> Result<(), InferError> {
        match self.control {
            ModelControlMode::Explicit => Ok(()),
            mode => Err(InferError::NotReady(format!(
                "explicit model {what} is not allowed in model control mode `{}`; start the server with \
                 --model-control-mode explicit",
                mode.as_str()
            ))),
        }
    }

    pub(super) fn lifecycle_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.lifecycles.lock().entry(name.to_string()).or_default())
    }

    /// Loads or reloads one model. The serving versions keep serving until the new ones are ready.
    pub async fn load_model(
        self: &Arc<Self>,
        name: &str,
        config: Option<(ModelConfig, String)>,
    ) -> Result<(), InferError> {
        let lock = self.lifecycle_lock(name);
        // A load queued behind another one does not hold the drain either.
        let turn = self.unless_stopping(lock.lock()).await;
        if turn.is_none() || self.is_shutting_down() {
            return Err(InferError::NotReady(format!("failed to load '{name}': {CANCELLED}")));
        }
        let started = Instant::now();
        let result = self.load_locked(name, config).await;
        if !matches!(result, Err(InferError::NotFound(_))) {
            let labels = [("model", name.to_string())];
            metrics::histogram!(crate::metrics::LOAD_DURATION, &labels).record(started.elapsed().as_secs_f64());
        }
        result
    }

    /// The body of [`ModelManager::load_model`], under the model's lifecycle lock.
    async fn load_locked(
        self: &Arc<Self>,
        name: &str,
        config: Option<(ModelConfig, String)>,
    ) -> Result<(), InferError> {
        let current = self.models.read().get(name).cloned();
        let serving = current.as_ref().is_some_and(|c| c.phase == ModelPhase::Loaded && c.latest_ready().is_some());
        let read = self.repository.read_model(name, config.as_ref().map(|(c, t)| (c, t.as_str())));
        let Some(read) = self.unless_stopping(read).await else {
            return Err(self.fail(name, current, Failure::cancelled()));
        };
        let source = match read {
            Ok(source) => source,
            Err(RepositoryError::UnknownModel(_))
                if current.as_ref().is_none_or(|c| c.phase == ModelPhase::Unloaded) =>
            {
                // Triton's wording (clients match on its start); ferroserve's reason after it.
                return Err(InferError::NotFound(format!(
                    "failed to load '{name}', failed to poll from model repository: '{name}' is not in the model \
                     repository"
                )));
            }
            Err(e) => {
                // A fault in the files is retried by polling only once they change; an unreachable store on
                // every poll.
                let transient = e.is_transient();
                let print = if transient {
                    None
                } else {
                    self.unless_stopping(self.repository.fingerprint(name)).await.and_then(Result::ok)
                };
                return Err(self.fail(name, current, Failure { reason: e.to_string(), print, transient }));
            }
        };
        if !serving {
            self.swap(name, ModelEntry::loading(name));
        }
        let selected = select_versions(&source);
        if selected.is_empty() {
            // Triton's words first; then what is there (an empty `1/`, or a model file outside any version
            // directory, lists no version at all).
            let found: Vec<u64> = source.versions.iter().map(|v| v.version).collect();
            let what = if found.is_empty() {
                format!("{} has no numbered version directory holding a file (such as `1/model.onnx`)", source.location)
            } else {
                format!("{} has versions {found:?}, and none is in the policy's list", source.location)
            };
            let reason =
                format!("at least one version must be available under the version policy of model '{name}': {what}");
            return Err(self.fail(name, current, Failure::in_files(reason, source.fingerprint)));
        }
        let loader = match pick_loader(&self.loaders, &source) {
            Ok(loader) => loader,
            Err(reason) => return Err(self.fail(name, current, Failure::in_files(reason, source.fingerprint))),
        };

        let traffic = match self.policy_for(name, &source.config.parameters, current.as_deref().map(|c| &*c.traffic)) {
            Ok(traffic) => traffic,
            Err(reason) => return Err(self.fail(name, current, Failure::in_files(reason, source.fingerprint))),
        };

        // Keep the versions whose files and config did not change; build the rest.
        let mut kept: BTreeMap<u64, Arc<ModelVersion>> = BTreeMap::new();
        let mut to_build = Vec::new();
        for &version in &selected {
            let print = source.versions.iter().find(|v| v.version == version).map(|v| v.fingerprint);
            let reusable = current.as_ref().and_then(|c| match c.versions.get(&version) {
                // A version whose instances all failed is built again, even from the same files.
                Some(VersionState::Ready(m))
                    if c.built_from.get(&version).copied() == print && m.failed().is_none() =>
                {
                    Some(Arc::clone(m))
                }
                _ => None,
            });
            match reusable {
                Some(m) => {
                    kept.insert(version, m);
                }
                None => to_build.push(version),
            }
        }
        let Some(fetched) = self.unless_stopping(self.repository.fetch(&source, &to_build)).await else {
            return Err(self.fail(name, current, Failure::cancelled()));
        };
        let dirs = match fetched {
            Ok(dirs) => dirs,
            Err(e) => {
                let (reason, transient) = (e.to_string(), e.is_transient());
                let print = e.is_corrupted().then_some(source.fingerprint);
                return Err(self.fail(name, current, Failure { reason, print, transient }));
            }
        };
        let built = {
            let (source, options, loader) = (source.clone(), self.options.clone(), Arc::clone(&loader));
            let on_failed = self.failure_hook(name);
            tokio::task::spawn_blocking(move || {
                dirs.iter()
                    .map(|(&version, dir)| {
                        (version, build_version(&source, version, dir, &loader, &options, &on_failed))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| InferError::Internal(format!("the load of model `{name}` stopped: {e}")))?
        };

        let failures: Vec<String> =
            built.iter().filter_map(|(v, r)| r.as_ref().err().map(|reason| format!("version {v}: {reason}"))).collect();
        if !failures.is_empty() && serving {
            // Keep what serves; the versions that did build never served and are simply stopped.
            let orphans = built.into_iter().filter_map(|(_, r)| r.ok().map(Arc::new)).collect();
            let error = self.fail(name, current, Failure::in_files(failures.join("; "), source.fingerprint));
            self.retire(orphans).await;
            return Err(error);
        }

        let mut entry = ModelEntry { phase: ModelPhase::Loaded, traffic, ..ModelEntry::loading(name) };
        entry.source_fingerprint = Some(source.fingerprint);
        for (version, model) in &kept {
            entry.versions.insert(*version, VersionState::Ready(Arc::clone(model)));
        }
        for (version, result) in built {
            let state = match result {
                Ok(model) => VersionState::Ready(Arc::new(model)),
                Err(reason) => VersionState::Unavailable(reason),
            };
            entry.versions.insert(version, state);
        }
        for v in &source.versions {
            if matches!(entry.versions.get(&v.version), Some(VersionState::Ready(_))) {
                entry.built_from.insert(v.version, v.fingerprint);
            }
        }
        let ready = entry.is_ready();
        let (_, reason) = entry.state();
        self.swap(name, entry);
        let replaced: Vec<Arc<ModelVersion>> = current
            .map(|c| c.ready_versions().filter(|old| !kept.values().any(|k| Arc::ptr_eq(k, old))).cloned().collect())
            .unwrap_or_default();
        self.retire(replaced).await;
        if ready {
            tracing::info!(model = name, versions = ?selected, rebuilt = ?to_build, "model ready");
            Ok(())
        } else {
            tracing::error!(model = name, %reason, "model failed to load");
            Err(InferError::InvalidInput(format!("failed to load '{name}': {reason}")))
        }
    }

    /// Runs a step of a load that waits on the repository, unless a shutdown begins first (`None`). Only such
    /// steps give up: they leave nothing half-done (downloads land under their final names only when complete),
    /// while building instances is bounded and swapping the entry in takes no time.
    async fn unless_stopping<T>(&self, step: impl std::future::Future<Output = T>) -> Option<T> {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            biased;
            Ok(_) = stopping.wait_for(|stopping| *stopping) => None,
            value = step => Some(value),
        }
    }

    /// Records a failed load: a serving model keeps serving (the reason goes into the index), otherwise the
    /// model becomes `Failed`. Returns the error for the caller.
    fn fail(&self, name: &str, current: Option<Arc<ModelEntry>>, failure: Failure) -> InferError {
        let Failure { reason, print, transient } = failure;
        if reason == CANCELLED {
            tracing::info!(model = name, "load given up: the server is shutting down");
        } else {
            tracing::error!(model = name, %reason, "model failed to load");
        }
        let entry = match current {
            Some(c) if c.phase == ModelPhase::Loaded && c.latest_ready().is_some() => ModelEntry {
                last_failure: Some(reason.clone()),
                // Remember the files that failed, so polling does not retry them until they change again.
                source_fingerprint: print.or(c.source_fingerprint),
                ..(*c).clone()
            },
            _ => ModelEntry::failed(name, reason.clone(), print),
        };
        self.swap(name, entry);
        let message = format!("failed to load '{name}': {reason}");
        if transient { InferError::NotReady(message) } else { InferError::InvalidInput(message) }
    }

    pub(super) fn swap(&self, name: &str, entry: ModelEntry) {
        {
            // Recorded under the lock, so the gauge is always that of the entry in the map (see `failure_hook`).
            let mut models = self.models.write();
            record_state(&entry);
            models.insert(name.to_string(), Arc::new(entry));
        }
        self.publish();
    }

    /// What the instance pool of a version of model `name` calls once all its instances have stopped on device
    /// faults: the model's state changed without a lifecycle step, so its state gauge and the server's readiness
    /// (which the gRPC health `Watch` follows) are brought up to date. Holds the manager weakly: a pool may
    /// outlive it.
    fn failure_hook(self: &Arc<Self>, name: &str) -> FailureHook {
        let (manager, name) = (Arc::downgrade(self), name.to_string());
        FailureHook::new(move || {
            if let Some(manager) = manager.upgrade() {
                if let Some(entry) = manager.models.read().get(&name) {
                    record_state(entry);
                }
                manager.publish();
            }
        })
    }

    /// Unloads a model: new requests get 404 at once; queued and in-flight ones finish; returns once its
    /// instances have stopped. Unloading a model already unloaded is not an error.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), InferError> {
        let lock = self.lifecycle_lock(name);
        let _turn = lock.lock().await;
        let Some(current) = self.models.read().get(name).cloned() else {
            return Ok(()); // never loaded: nothing to do (Triton answers success too)
        };
        if current.phase == ModelPhase::Unloaded {
            return Ok(());
        }
        self.swap(name, ModelEntry::without_versions(name, ModelPhase::Unloading));
        let serving: Vec<Arc<ModelVersion>> = current.ready_versions().cloned().collect();
        drop(current);
        self.retire(serving).await;
        self.swap(name, ModelEntry::without_versions(name, ModelPhase::Unloaded));
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    /// Stops versions nothing can reach any more: waits (up to the retire timeout) for the requests still
    /// holding them, then closes their queues and joins their instance threads.
    async fn retire(&self, versions: Vec<Arc<ModelVersion>>) {
        let deadline = Instant::now() + self.options.retire_timeout;
        for version in versions {
            let mut pause = Duration::from_millis(1);
            while Arc::strong_count(&version) > 1 && Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            match Arc::try_unwrap(version) {
                Ok(model) => {
                    let label = format!("{}:{}", model.name, model.version);
                    if tokio::task::spawn_blocking(move || model.retire()).await.is_err() {
                        tracing::error!(version = %label, "stopping a version's instances failed");
                    }
                }
                Err(version) => {
                    // Something still holds it past the deadline: refuse new work; the instances exit once
                    // they have answered what is queued.
                    tracing::warn!(
                        model = %version.name,
                        version = version.version,
                        "requests still hold a retired version after the retire timeout; closing its queue"
                    );
                    version.close();
                }
            }
        }
    }

    /// One poll of the repository (poll mode): loads new models, reloads changed ones (only their changed
    /// versions are rebuilt) and unloads removed ones. A repository that cannot be listed changes nothing.
    pub async fn poll(self: &Arc<Self>) {
        let names = match self.repository.model_names().await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot poll the model repository; keeping the models as they are");
                if self.repository_failure.lock().is_some() {
                    *self.repository_failure.lock() = Some(e.to_string());
                }
                return;
            }
        };
        {
            // New models count toward readiness from now on: mark them loading before anything is published,
            // so readiness never reads true for a repository whose models are not loaded yet.
            let mut models = self.models.write();
            for name in &names {
                if models.get(name).is_none_or(|e| !e.is_wanted()) {
                    models.insert(name.clone(), Arc::new(ModelEntry::loading(name)));
                }
            }
        }
        if self.repository_failure.lock().take().is_some() {
            tracing::info!("the model repository is readable again");
        }
        self.publish();
        // Only names and fingerprints: holding entries would hold their versions, which retiring waits out.
        let current: BTreeMap<String, (bool, Option<u64>)> =
            self.models.read().iter().map(|(n, e)| (n.clone(), (e.is_wanted(), e.source_fingerprint))).collect();
        // One recursive listing per root for every model's fingerprint (not one per model).
        let prints = match self.repository.fingerprints().await {
            Ok(prints) => prints,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the model repository's files; keeping the models as they are");
                return;
            }
        };
        let mut to_load = Vec::new();
        for name in &names {
            let changed = match current.get(name) {
                None | Some((_, None)) => true,
                Some((_, Some(before))) => prints.get(name).is_none_or(|now| now != before),
            };
            if changed {
                to_load.push(name.clone());
            }
        }
        let removed: Vec<String> =
            current.iter().filter(|(n, (wanted, _))| *wanted && !names.contains(n)).map(|(n, _)| n.clone()).collect();
        for name in removed {
            tracing::info!(model = %name, "model removed from the repository; unloading");
            let _ = self.unload_model(&name).await;
        }
        self.load_many(to_load).await;
    }
}

/// Sets the model's state gauge: 1 for the state it is in, 0 for the others.
fn record_state(entry: &ModelEntry) {
    let (state, _) = entry.state();
    for s in [IndexState::Ready, IndexState::Loading, IndexState::Unloading, IndexState::Unavailable] {
        let labels = [("model", entry.name.clone()), ("state", s.as_str().to_string())];
        metrics::gauge!(crate::metrics::MODEL_STATE, &labels).set(if s == state { 1.0 } else { 0.0 });
    }
}

/// A name the repository API accepts: one directory name of a repository, so no name can reach outside the
/// repository or into the download cache (empty, `.`, `..`, separators and control characters are refused, as
/// are names longer than a file name may be). Names are only ever matched against a listing too; this makes the
/// refusal a clear 400 instead of a "not found".
pub(crate) fn check_model_name(name: &str) -> Result<(), InferError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        let shown: String = name.chars().take(64).collect();
        return Err(InferError::invalid(format!(
            "`{}` is not a model name: one directory name of the repository, without `/`, `\\` or control \
             characters, not `.` or `..`, at most 255 bytes",
            shown.escape_debug()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod name_tests {
    use super::check_model_name;

    #[test]
    fn names_that_could_leave_the_repository_are_refused() {
        for good in ["mlp", "my-model_v2", "a.b", "模型", "..x"] {
            assert!(check_model_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(256);
        for bad in ["", ".", "..", "../etc", "a/b", "a\\b", "/abs", "a\0b", "a\nb", long.as_str()] {
            let e = check_model_name(bad).unwrap_err().to_string();
            assert!(e.contains("not a model name"), "{bad:?}: {e}");
        }
    }
}
