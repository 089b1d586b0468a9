//! Traffic control between model versions at run time (see `ferroserve_engine::routing`), shared by HTTP
//! (`GET/PUT/DELETE /v2/models/{m}/traffic`) and gRPC (`ferroserve.traffic.v1.TrafficControl`): one JSON form
//! of the policy and of the state. Setting takes the object the state shows under `policy`; resetting returns
//! to the policy of the model's config. A change never drops or re-queues a request.

use std::collections::BTreeMap;

use ferroserve_engine::InferError;
use ferroserve_engine::manager::traffic::Traffic;
use ferroserve_engine::routing::guard::GuardPolicy;
use ferroserve_engine::routing::{DEFAULT_SHADOW_BUDGET, Shadow, TrafficPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::state::AppState;

/// The policy as JSON (both directions).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyView {
    /// Weight by version number (as text: JSON object keys).
    #[serde(default)]
    split: BTreeMap<String, u32>,
    #[serde(default)]
    pinned_version: Option<u64>,
    #[serde(default)]
    pin_header: Option<String>,
    #[serde(default)]
    sticky_header: Option<String>,
    #[serde(default)]
    shadow: Option<ShadowView>,
    #[serde(default)]
    guard: Option<GuardView>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowView {
    version: u64,
    fraction: f64,
    #[serde(default)]
    budget: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardView {
    #[serde(default)]
    error_rate: Option<f64>,
    #[serde(default)]
    p99_ratio: Option<f64>,
    #[serde(default)]
    window_secs: Option<f64>,
    #[serde(default)]
    min_requests: Option<u64>,
}

fn header(name: Option<String>) -> Result<Option<String>, InferError> {
    match name.map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(n) if http::HeaderName::from_bytes(n.as_bytes()).is_ok() => Ok(Some(n)),
        Some(n) => Err(InferError::invalid(format!("`{n}` is not a header name"))),
    }
}

impl PolicyView {
    fn into_policy(self) -> Result<TrafficPolicy, InferError> {
        let mut split = BTreeMap::new();
        for (version, weight) in self.split {
            let v: u64 = version
                .trim()
                .parse()
                .map_err(|_| InferError::invalid(format!("`{version}` is not a version number")))?;
            split.insert(v, weight);
        }
        let guard = self.guard.map(|g| {
            let d = GuardPolicy::default();
            GuardPolicy {
                max_error_rate_increase: g.error_rate.unwrap_or(d.max_error_rate_increase),
                max_p99_ratio: g.p99_ratio.unwrap_or(d.max_p99_ratio),
                window: g
                    .window_secs
                    .filter(|w| w.is_finite() && *w > 0.0 && *w <= 86_400.0)
                    .map_or(d.window, std::time::Duration::from_secs_f64),
                min_requests: g.min_requests.unwrap_or(d.min_requests),
            }
        });
        Ok(TrafficPolicy {
            split,
            pinned: self.pinned_version,
            pin_header: header(self.pin_header)?,
            sticky_header: header(self.sticky_header)?,
            shadow: self.shadow.map(|s| Shadow {
                version: s.version,
                fraction: s.fraction,
                budget: s.budget.unwrap_or(DEFAULT_SHADOW_BUDGET),
            }),
            guard,
        })
    }

    fn of(policy: &TrafficPolicy) -> Self {
        PolicyView {
            split: policy.split.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
            pinned_version: policy.pinned,
            pin_header: policy.pin_header.clone(),
            sticky_header: policy.sticky_header.clone(),
            shadow: policy.shadow.as_ref().map(|s| ShadowView {
                version: s.version,
                fraction: s.fraction,
                budget: Some(s.budget),
            }),
            guard: policy.guard.as_ref().map(|g| GuardView {
                error_rate: Some(g.max_error_rate_increase),
                p99_ratio: Some(g.max_p99_ratio),
                window_secs: Some(g.window.as_secs_f64()),
                min_requests: Some(g.min_requests),
            }),
        }
    }
}

fn view(model: &str, traffic: &Traffic, ready: &[u64]) -> Value {
    let rollbacks: Vec<Value> = traffic
        .rollbacks
        .iter()
        .map(|r| {
            let at = r.at.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            json!({ "version": r.version, "reason": r.reason, "at_unix_secs": at })
        })
        .collect();
    json!({
        "model": model,
        "routing": traffic.policy.to_string(),
        "source": traffic.source.as_str(),
        "policy": PolicyView::of(&traffic.policy),
        "ready_versions": ready,
        "rollbacks": rollbacks,
    })
}

/// The state of a model's traffic.
pub(crate) fn get(state: &AppState, model: &str) -> Result<Value, InferError> {
    let (traffic, ready) = state.manager.traffic(model)?;
    Ok(view(model, &traffic, &ready))
}

/// Replaces a model's policy with the JSON `body`.
pub(crate) async fn set(state: &AppState, model: &str, body: &[u8]) -> Result<Value, InferError> {
    let view: PolicyView = serde_json::from_slice(body)
        .map_err(|e| InferError::invalid(format!("the traffic policy is not valid JSON of the expected shape: {e}")))?;
    let policy = view.into_policy()?;
    state.manager.set_traffic(model, Some(policy)).await?;
    get(state, model)
}

/// Returns a model to its config's policy.
pub(crate) async fn reset(state: &AppState, model: &str) -> Result<Value, InferError> {
    state.manager.set_traffic(model, None).await?;
    get(state, model)
}
