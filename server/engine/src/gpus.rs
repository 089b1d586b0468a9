//! The GPUs models may be placed on, and the ones that failed.
//!
//! Instances on one GPU share its CUDA context, and an error that poisons it (an illegal address, say) fails
//! every later call on that device, for every model, until the process ends. So such a fault is recorded per
//! device: no model is placed there again, and the server reports itself not live, so that an orchestrator
//! restarts it.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// The CUDA devices models may use: found at start-up and narrowed by `--gpus`, or why there are none (said
/// in the reason of a model that asks for a GPU); and those that have failed since. Clones share the failures.
#[derive(Debug, Clone)]
pub struct Gpus {
    found: Result<Vec<u32>, String>,
    faults: Arc<Mutex<BTreeMap<u32, String>>>,
}

impl Gpus {
    /// These ordinals (at least one).
    pub fn new(ordinals: Vec<u32>) -> Self {
        if ordinals.is_empty() {
            return Gpus::none("no GPU was found");
        }
        Gpus { found: Ok(ordinals), faults: Arc::default() }
    }

    /// None, for this reason.
    pub fn none(why: impl Into<String>) -> Self {
        Gpus { found: Err(why.into()), faults: Arc::default() }
    }

    /// The ordinals found, or why there are none (failed ones included: see [`Gpus::fault`]).
    pub fn usable(&self) -> Result<&[u32], &str> {
        match &self.found {
            Ok(ordinals) => Ok(ordinals),
            Err(why) => Err(why),
        }
    }

    /// Records that GPU `ordinal` failed in a way that leaves it unusable; the first reason is kept.
    pub fn record_fault(&self, ordinal: u32, why: &str) {
        self.faults.lock().entry(ordinal).or_insert_with(|| {
            tracing::error!(gpu = ordinal, fault = why, "GPU failed; the server must be restarted to use it again");
            why.to_string()
        });
    }

    /// Why GPU `ordinal` can no longer be used, if it failed.
    pub fn fault(&self, ordinal: u32) -> Option<String> {
        self.faults.lock().get(&ordinal).cloned()
    }

    /// Every failed GPU and why.
    pub fn faults(&self) -> Vec<(u32, String)> {
        self.faults.lock().iter().map(|(&g, why)| (g, why.clone())).collect()
    }
}

impl Default for Gpus {
    fn default() -> Self {
        Gpus::none("GPUs were not looked for")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_faults_and_the_first_reason_stays() {
        let gpus = Gpus::new(vec![0, 1]);
        let seen_by_a_pool = gpus.clone();
        seen_by_a_pool.record_fault(1, "illegal address");
        seen_by_a_pool.record_fault(1, "later");
        assert_eq!(gpus.fault(1).as_deref(), Some("illegal address"));
        assert_eq!(gpus.fault(0), None);
        assert_eq!(gpus.faults(), [(1, "illegal address".to_string())]);
        assert_eq!(Gpus::new(vec![]).usable(), Err("no GPU was found"));
    }
}
