//! What the manager knows about one model: where its lifecycle stands and which versions serve, as typed
//! states. Entries are immutable snapshots behind an `Arc`; every lifecycle step builds a new one and swaps
//! it in, so a request never sees a half-updated model.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::ModelVersion;

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

/// Where a model's lifecycle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPhase {
    /// Loading for the first time: nothing serves yet.
    Loading,
    /// Loaded; `versions` says which serve. A reload keeps this phase (and the serving versions) while the new
    /// versions are built beside them.
    Loaded,
    /// The model could not be loaded at all (unreadable files, bad config, no version, unknown platform).
    Failed(String),
    /// Unload requested: new requests are refused while queued and in-flight ones finish.
    Unloading,
    /// Unloaded (on request, or removed from the repository); kept so the index can say so.
    Unloaded,
}

/// A model's or version's state in the repository index, as Triton spells it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// Serving.
    Ready,
    /// Being loaded.
    Loading,
    /// Being unloaded.
    Unloading,
    /// Not serving; the row's reason says why.
    Unavailable,
    /// In the repository, never loaded (Triton lists these without a state).
    NotLoaded,
}

impl IndexState {
    /// The wire spelling (`READY`, `LOADING`, `UNLOADING`, `UNAVAILABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            IndexState::Ready => "READY",
            IndexState::Loading => "LOADING",
            IndexState::Unloading => "UNLOADING",
            IndexState::Unavailable => "UNAVAILABLE",
            IndexState::NotLoaded => "",
        }
    }
}

/// Everything known about one model.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Model name.
    pub name: String,
    /// Lifecycle phase.
    pub phase: ModelPhase,
    /// Versions the policy selected, by number.
    pub versions: BTreeMap<u64, VersionState>,
    /// Why the last load failed while the versions above kept serving.
    pub last_failure: Option<String>,
    /// Fingerprint of the files each serving version was built from (config included), so a reload rebuilds
    /// only the versions whose files changed.
    pub(crate) built_from: BTreeMap<u64, u64>,
    /// Fingerprint of the whole model directory when it was last read, for polling; `None` when it could not
    /// be read (the next poll tries again).
    pub(crate) source_fingerprint: Option<u64>,
    /// How requests that name no version are spread over the ready versions.
    pub traffic: Arc<super::traffic::Traffic>,
}

impl ModelEntry {
    /// A model whose first load is starting.
    pub(crate) fn loading(name: &str) -> Self {
        ModelEntry {
            name: name.to_string(),
            phase: ModelPhase::Loading,
            versions: BTreeMap::new(),
            last_failure: None,
            built_from: BTreeMap::new(),
            source_fingerprint: None,
            traffic: Arc::default(),
        }
    }

    /// A model that could not be loaded at all.
    pub(crate) fn failed(name: &str, reason: String, source_fingerprint: Option<u64>) -> Self {
        ModelEntry { phase: ModelPhase::Failed(reason), source_fingerprint, ..ModelEntry::loading(name) }
    }

    /// A model with no versions in the given phase (`Unloading`, `Unloaded`).
    pub(crate) fn without_versions(name: &str, phase: ModelPhase) -> Self {
        ModelEntry { phase, ..ModelEntry::loading(name) }
    }

    /// Ready when loaded and every selected version serves.
    pub fn is_ready(&self) -> bool {
        self.phase == ModelPhase::Loaded
            && !self.versions.is_empty()
            && self.versions.values().all(|v| matches!(v, VersionState::Ready(m) if m.failed().is_none()))
    }

    /// Whether the server's readiness depends on this model (it has not been unloaded).
    pub fn is_wanted(&self) -> bool {
        !matches!(self.phase, ModelPhase::Unloading | ModelPhase::Unloaded)
    }

    /// The ready versions, oldest first (a version whose instances all failed is not one).
    pub fn ready_versions(&self) -> impl DoubleEndedIterator<Item = &Arc<ModelVersion>> + '_ {
        self.versions.values().filter_map(|v| match v {
            VersionState::Ready(m) if m.failed().is_none() => Some(m),
            _ => None,
        })
    }

    /// The newest ready version.
    pub fn latest_ready(&self) -> Option<&Arc<ModelVersion>> {
        self.ready_versions().next_back()
    }

    /// The model's state and reason, as the repository index shows it.
    pub fn state(&self) -> (IndexState, String) {
        match &self.phase {
            ModelPhase::Loading => (IndexState::Loading, String::new()),
            ModelPhase::Unloading => (IndexState::Unloading, String::new()),
            ModelPhase::Unloaded => (IndexState::Unavailable, "unloaded".to_string()),
            ModelPhase::Failed(reason) => (IndexState::Unavailable, reason.clone()),
            ModelPhase::Loaded if self.is_ready() => {
                (IndexState::Ready, self.last_failure.as_ref().map(|f| reload_failed(f)).unwrap_or_default())
            }
            ModelPhase::Loaded => {
                let reason = self
                    .versions
                    .iter()
                    .filter_map(|(v, s)| match s {
                        VersionState::Unavailable(r) => Some(format!("version {v}: {r}")),
                        VersionState::Ready(m) => m.failed().map(|r| format!("version {v}: {r}")),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                (IndexState::Unavailable, reason)
            }
        }
    }

    /// One index row per version (or one for the model when it has none).
    pub(crate) fn index_rows(&self) -> Vec<IndexEntry> {
        if self.versions.is_empty() {
            let (state, reason) = self.state();
            return vec![IndexEntry { name: self.name.clone(), version: String::new(), state, reason }];
        }
        self.versions
            .iter()
            .map(|(n, v)| {
                let (state, reason) = match v {
                    VersionState::Ready(m) => match m.failed() {
                        Some(why) => (IndexState::Unavailable, why),
                        None => (
                            IndexState::Ready,
                            self.last_failure.as_ref().map(|f| reload_failed(f)).unwrap_or_default(),
                        ),
                    },
                    VersionState::Loading => (IndexState::Loading, String::new()),
                    VersionState::Unavailable(r) => (IndexState::Unavailable, r.clone()),
                };
                IndexEntry { name: self.name.clone(), version: n.to_string(), state, reason }
            })
            .collect()
    }
}

fn reload_failed(reason: &str) -> String {
    format!("serving the previous files; the last reload failed: {reason}")
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, or empty for a model-level row (a model that failed before any version).
    pub version: String,
    /// State.
    pub state: IndexState,
    /// Why it is not ready (or why a reload failed while it kept serving).
    pub reason: String,
}
