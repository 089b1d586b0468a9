//! Routing inside the manager: which version serves a request that names none, shadow copies, and the guard
//! that rolls a canary back. The pure decisions live in [`crate::routing`]; this module holds each model's
//! live state (the policy in force, the guard's windows, the shadow budget) and runs them on the request path.
//!
//! The policy in force is part of the model's entry, so a request reads it with the entry it already looks up,
//! and a change swaps the entry (under the model's lifecycle lock): requests in flight keep the version they
//! were given, none is dropped or re-queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use super::{ModelManager, VersionState};
use crate::InferError;
use crate::request::{InferRequest, InferResponse};
use crate::routing::guard::GuardState;
use crate::routing::{TrafficPolicy, choose, sticky_draw};

/// Rollbacks remembered per model (the newest).
const MAX_ROLLBACKS_KEPT: usize = 32;

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The model's config.pbtxt `parameters` (or nothing: `latest`).
    Config,
    /// The traffic-control API.
    Admin,
    /// The guard took a canary's weight to 0.
    Rollback,
}

impl PolicySource {
    /// Lower-case name, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Config => "config",
            PolicySource::Admin => "admin",
            PolicySource::Rollback => "rollback",
        }
    }
}

/// A canary the guard took out of the split.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// The canary.
    pub version: u64,
    /// What it did worse.
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

/// One model's routing state.
#[derive(Debug)]
pub struct Traffic {
    /// The policy in force.
    pub policy: TrafficPolicy,
    /// Where it came from.
    pub source: PolicySource,
    /// Canaries rolled back so far (newest last; kept across policy changes).
    pub rollbacks: Vec<Rollback>,
    guard: Mutex<GuardState>,
    shadow_slots: Arc<tokio::sync::Semaphore>,
    rolling_back: AtomicBool,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic::new(TrafficPolicy::default(), PolicySource::Config, Vec::new())
    }
}

impl Traffic {
    /// State for a new policy: empty guard windows, a full shadow budget.
    pub fn new(policy: TrafficPolicy, source: PolicySource, rollbacks: Vec<Rollback>) -> Self {
        let budget = policy.shadow.as_ref().map_or(1, |s| s.budget);
        Traffic {
            policy,
            source,
            rollbacks,
            guard: Mutex::new(GuardState::default()),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(budget)),
            rolling_back: AtomicBool::new(false),
        }
    }

    /// The version with the largest weight among `ready` (the one canaries are compared with).
    fn primary(&self, ready: &[u64]) -> Option<u64> {
        self.policy
            .split
            .iter()
            .filter(|(v, w)| **w > 0 && ready.contains(v))
            .max_by_key(|(v, w)| (**w, **v))
            .map(|(v, _)| *v)
    }
}

/// What a request carries for routing, read from its headers by the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteKeys {
    /// The pin header's value: a version, as if the URL named it.
    pub pin: Option<String>,
    /// The sticky header's value.
    pub sticky: Option<String>,
}

impl ModelManager {
    /// The pin and sticky values of one request, read through `header` (HTTP headers or gRPC metadata) for
    /// the header names the model's policy uses; nothing is read for a model that uses none.
    pub fn route_keys<'h>(&self, name: &str, header: impl Fn(&str) -> Option<&'h str>) -> RouteKeys {
        let models = self.models.read();
        let Some(policy) = models.get(name).map(|e| &e.traffic.policy) else { return RouteKeys::default() };
        let read = |h: &Option<String>| h.as_deref().and_then(&header).map(|v| v.trim().to_string());
        RouteKeys { pin: read(&policy.pin_header), sticky: read(&policy.sticky_header) }
    }

    /// Runs one request: a named version (URL, gRPC field or pin header) serves it; otherwise the model's
    /// policy picks one, a shadow copy may go to the candidate, and the guard watches the canaries. Returns the
    /// version the request went to (when it got that far) with the answer, so errors are counted per version too.
    pub async fn infer_routed(
        self: &Arc<Self>,
        mut request: InferRequest,
        keys: RouteKeys,
    ) -> (Option<u64>, Result<InferResponse, InferError>) {
        if request.model_version.is_none() {
            request.model_version = keys.pin.filter(|v| !v.is_empty());
        }
        if request.model_version.is_some() {
            return match self.version(&request.model_name, request.model_version.as_deref()) {
                Ok(v) => (Some(v.version), v.infer(request).await),
                Err(e) => (None, Err(e)),
            };
        }
        let entry = match self.entry(&request.model_name) {
            Ok(entry) => entry,
            Err(e) => return (None, Err(e)),
        };
        let traffic = Arc::clone(&entry.traffic);
        if traffic.policy.is_latest() {
            let Some(version) = entry.latest_ready().cloned() else {
                return (None, Err(super::not_ready(&entry)));
            };
            drop(entry); // hold only the version that serves, so a reload can retire the others
            return (Some(version.version), version.infer(request).await);
        }
        let ready: Vec<u64> = entry.ready_versions().map(|v| v.version).collect();
        let draw = match &keys.sticky {
            Some(key) if traffic.policy.sticky_header.is_some() => sticky_draw(key.as_bytes()),
            _ => fastrand::u64(..),
        };
        let version = match choose(&traffic.policy, &ready, draw).and_then(|v| entry.versions.get(&v)) {
            Some(VersionState::Ready(version)) => Arc::clone(version),
            _ => return (None, Err(super::not_ready(&entry))),
        };
        let chosen = version.version;
        let shadow = self.shadow_copy(&entry, &traffic, chosen, &request);
        drop(entry);
        let start = Instant::now();
        let result = version.infer(request).await;
        if let Some(guard) = &traffic.policy.guard {
            self.watch_canary(&traffic, guard, &ready, chosen, result.is_ok(), start, &version.name);
        }
        if let Some(shadow) = shadow {
            shadow.run(result.as_ref().ok().map(|r| r.outputs.clone()));
        }
        (Some(chosen), result)
    }

    /// Records a routed request's outcome for the guard, and rolls the canary back once it must go.
    #[allow(clippy::too_many_arguments)]
    fn watch_canary(
        self: &Arc<Self>,
        traffic: &Arc<Traffic>,
        guard: &crate::routing::guard::GuardPolicy,
        ready: &[u64],
        chosen: u64,
        ok: bool,
        start: Instant,
        model: &str,
    ) {
        let now = Instant::now();
        let mut state = traffic.guard.lock();
        state.record(guard, chosen, ok, now - start, now);
        let Some(primary) = traffic.primary(ready).filter(|&p| p != chosen) else { return };
        let Some(reason) = state.verdict(guard, primary, chosen, now) else { return };
        if traffic.rolling_back.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(state);
        let (manager, model, judged) = (Arc::clone(self), model.to_string(), Arc::clone(traffic));
        tokio::spawn(async move { manager.roll_back(&model, &judged, chosen, reason).await });
    }

    /// A copy of `request` for the shadow version, when the policy asks for one, the dice say so, the shadow
    /// version is ready and the shadow budget has room (else the copy is dropped and counted).
    fn shadow_copy(
        &self,
        entry: &super::ModelEntry,
        traffic: &Traffic,
        chosen: u64,
        request: &InferRequest,
    ) -> Option<super::shadow::ShadowRun> {
        let policy = traffic.policy.shadow.as_ref()?;
        if policy.version == chosen || fastrand::f64() >= policy.fraction || self.is_shutting_down() {
            return None;
        }
        let Some(VersionState::Ready(target)) = entry.versions.get(&policy.version) else {
            return None;
        };
        if target.failed().is_some() {
            return None;
        }
        let Ok(slot) = Arc::clone(&traffic.shadow_slots).try_acquire_owned() else {
            super::shadow::count(&entry.name, policy.version, "dropped");
            return None;
        };
        Some(super::shadow::ShadowRun::new(Arc::clone(target), request.clone(), slot))
    }

    /// The routing state of a model.
    pub fn traffic(&self, name: &str) -> Result<(Arc<Traffic>, Vec<u64>), InferError> {
        let entry = self.entry(name)?;
        Ok((Arc::clone(&entry.traffic), entry.ready_versions().map(|v| v.version).collect()))
    }

    /// Replaces a model's policy (`None`: back to its config's). Versions the policy names must be versions the
    /// model has. Requests in flight keep their version; the next ones follow the new policy.
    pub async fn set_traffic(
        self: &Arc<Self>,
        name: &str,
        policy: Option<TrafficPolicy>,
    ) -> Result<Arc<Traffic>, InferError> {
        let lock = self.lifecycle_lock(name);
        let _serialized = lock.lock().await;
        let entry = self.entry(name)?;
        let invalid = |e: crate::routing::PolicyError| InferError::InvalidInput(e.to_string());
        let (policy, source) = match policy {
            Some(p) => {
                p.check().map_err(invalid)?;
                let named = p.split.keys().chain(p.pinned.iter()).chain(p.shadow.iter().map(|s| &s.version));
                if let Some(v) = named.into_iter().find(|v| !entry.versions.contains_key(v)) {
                    return Err(InferError::InvalidInput(format!(
                        "model `{name}` has no version {v} (its versions: {:?})",
                        entry.versions.keys().collect::<Vec<_>>()
                    )));
                }
                (p, PolicySource::Admin)
            }
            None => {
                self.traffic_overrides.lock().remove(name);
                let config = entry.latest_ready().map(|v| v.config.parameters.clone()).unwrap_or_default();
                (TrafficPolicy::from_parameters(&config).map_err(invalid)?, PolicySource::Config)
            }
        };
        let traffic = Arc::new(Traffic::new(policy, source, entry.traffic.rollbacks.clone()));
        if source == PolicySource::Admin {
            self.traffic_overrides.lock().insert(name.to_string(), traffic.policy.clone());
        }
        self.swap(name, super::ModelEntry { traffic: Arc::clone(&traffic), ..(*entry).clone() });
        crate::metrics::record_traffic(name, &traffic.policy, Some(&entry.traffic.policy));
        tracing::info!(model = name, policy = %traffic.policy, source = source.as_str(), "traffic policy changed");
        Ok(traffic)
    }

    /// Takes a canary's weight to 0 and says why, unless the policy it was judged under has been replaced
    /// meanwhile (a reload or a new policy starts a fresh judgement).
    async fn roll_back(self: Arc<Self>, name: &str, judged: &Arc<Traffic>, canary: u64, reason: String) {
        let lock = self.lifecycle_lock(name);
        let _serialized = lock.lock().await;
        let Ok(entry) = self.entry(name) else { return };
        if !Arc::ptr_eq(&entry.traffic, judged) {
            return;
        }
        if entry.traffic.policy.split.get(&canary).is_none_or(|&w| w == 0) {
            return;
        }
        let mut policy = entry.traffic.policy.clone();
        policy.split.insert(canary, 0);
        if policy.split.values().all(|&w| w == 0) {
            return; // nothing left to route to: leave it to an operator
        }
        let mut rollbacks = entry.traffic.rollbacks.clone();
        rollbacks.push(Rollback { version: canary, reason: reason.clone(), at: SystemTime::now() });
        if rollbacks.len() > MAX_ROLLBACKS_KEPT {
            rollbacks.drain(..rollbacks.len() - MAX_ROLLBACKS_KEPT);
        }
        self.traffic_overrides.lock().insert(name.to_string(), policy.clone());
        let traffic = Arc::new(Traffic::new(policy, PolicySource::Rollback, rollbacks));
        self.swap(name, super::ModelEntry { traffic: Arc::clone(&traffic), ..(*entry).clone() });
        crate::metrics::record_traffic(name, &traffic.policy, Some(&entry.traffic.policy));
        crate::metrics::record_rollback(name, canary);
        tracing::warn!(model = name, version = canary, %reason, "canary rolled back: its weight is now 0");
    }

    /// The policy a (re)loaded model starts with: an API override if one is in force, else its config's.
    pub(crate) fn policy_for(
        &self,
        name: &str,
        parameters: &std::collections::BTreeMap<String, String>,
        previous: Option<&Traffic>,
    ) -> Result<Arc<Traffic>, String> {
        let rollbacks = previous.map(|t| t.rollbacks.clone()).unwrap_or_default();
        if let Some(p) = self.traffic_overrides.lock().get(name).cloned() {
            let source = previous.map_or(PolicySource::Admin, |t| t.source);
            return Ok(Arc::new(Traffic::new(p, source, rollbacks)));
        }
        let policy = TrafficPolicy::from_parameters(parameters).map_err(|e| e.to_string())?;
        crate::metrics::record_traffic(name, &policy, previous.map(|t| &t.policy));
        Ok(Arc::new(Traffic::new(policy, PolicySource::Config, rollbacks)))
    }
}
