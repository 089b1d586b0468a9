//! Traffic between the versions of one model: which ready version serves a request that names none.
//!
//! A [`TrafficPolicy`] is `latest` (the newest ready version, the default), a pinned version, or a weighted
//! split; optionally a header pins a version per request, a sticky key (another header) makes the choice
//! deterministic per key, a shadow version sees a copy of a fraction of requests, and a guard takes a canary's
//! weight back to 0 when it does worse than the primary. [`choose`] is a pure function of the policy, the ready
//! versions and a 64-bit draw (random, or a hash of the sticky key), so it is tested without sockets or clocks.
//!
//! Policies come from the model's `config.pbtxt` `parameters` (string values, so a Triton repository stays
//! valid) and can be replaced at run time; a request that names a version bypasses all of it.

pub mod guard;

use std::collections::BTreeMap;
use std::fmt;

/// How one model's traffic is spread over its ready versions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficPolicy {
    /// Weight per version; empty means `latest`. Versions not ready get nothing: their share goes to the others.
    pub split: BTreeMap<u64, u32>,
    /// Every request goes to this version while it is ready (overrides `split`).
    pub pinned: Option<u64>,
    /// A request header whose value names the version to use (as if the URL named it).
    pub pin_header: Option<String>,
    /// A request header whose value keys a deterministic choice: one key, one version (by weight).
    pub sticky_header: Option<String>,
    /// A copy of a fraction of requests also goes to this version; its answer is compared, never returned.
    pub shadow: Option<Shadow>,
    /// Automatic rollback of canaries.
    pub guard: Option<guard::GuardPolicy>,
}

/// Shadow traffic to a candidate version.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// The candidate.
    pub version: u64,
    /// Fraction of primary requests copied to it, 0 to 1.
    pub fraction: f64,
    /// Shadow requests in flight at most; beyond it copies are dropped (shadow work is shed first).
    pub budget: usize,
}

/// A policy that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("traffic policy: {0}")]
pub struct PolicyError(pub String);

/// The `parameters` keys a config uses for its policy.
pub mod keys {
    /// `"1:90,2:10"`: weights by version.
    pub const SPLIT: &str = "traffic_split";
    /// `"2"`: one version takes everything.
    pub const PINNED: &str = "traffic_pinned_version";
    /// A header naming the version per request.
    pub const PIN_HEADER: &str = "traffic_pin_header";
    /// A header keying sticky choices.
    pub const STICKY_HEADER: &str = "traffic_sticky_header";
    /// `"2:0.1"`: shadow version and fraction (`"2:0.1:16"` with a budget).
    pub const SHADOW: &str = "traffic_shadow";
    /// `"error_rate=0.05,p99_ratio=2,window_secs=30,min_requests=50"`.
    pub const GUARD: &str = "traffic_guard";
}

/// Default number of shadow requests in flight per model.
pub const DEFAULT_SHADOW_BUDGET: usize = 8;
/// Largest shadow budget a policy may set.
pub const MAX_SHADOW_BUDGET: usize = 10_000;

impl TrafficPolicy {
    /// The policy a model's config parameters describe (no keys: `latest`).
    pub fn from_parameters(parameters: &BTreeMap<String, String>) -> Result<Self, PolicyError> {
        let mut policy = TrafficPolicy::default();
        if let Some(split) = parameters.get(keys::SPLIT) {
            policy.split = parse_split(split)?;
        }
        if let Some(v) = parameters.get(keys::PINNED) {
            policy.pinned = Some(parse_version(v)?);
        }
        policy.pin_header = header_name(parameters.get(keys::PIN_HEADER))?;
        policy.sticky_header = header_name(parameters.get(keys::STICKY_HEADER))?;
        if let Some(shadow) = parameters.get(keys::SHADOW) {
            policy.shadow = Some(parse_shadow(shadow)?);
        }
        if let Some(guard) = parameters.get(keys::GUARD) {
            policy.guard = Some(guard::GuardPolicy::parse(guard)?);
        }
        policy.check()?;
        Ok(policy)
    }

    /// Whether this is plain `latest` routing with nothing else to do per request.
    pub fn is_latest(&self) -> bool {
        *self == TrafficPolicy::default()
    }

    /// Refuses policies that cannot mean anything.
    pub fn check(&self) -> Result<(), PolicyError> {
        if !self.split.is_empty() && self.split.values().all(|&w| w == 0) {
            return Err(PolicyError("a split needs at least one version with a weight above 0".into()));
        }
        if let Some(s) = &self.shadow {
            if !(0.0..=1.0).contains(&s.fraction) {
                return Err(PolicyError(format!("shadow fraction {} is not between 0 and 1", s.fraction)));
            }
            if s.budget == 0 || s.budget > MAX_SHADOW_BUDGET {
                return Err(PolicyError(format!("a shadow budget must be from 1 to {MAX_SHADOW_BUDGET}")));
            }
        }
        if let Some(g) = &self.guard {
            g.check()?;
        }
        Ok(())
    }
}

fn parse_version(text: &str) -> Result<u64, PolicyError> {
    text.trim().parse().map_err(|_| PolicyError(format!("`{text}` is not a version number")))
}

fn header_name(value: Option<&String>) -> Result<Option<String>, PolicyError> {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => Ok(Some(v)),
        Some(v) => Err(PolicyError(format!("`{v}` is not a header name"))),
    }
}

/// `"1:90,2:10"` (spaces allowed).
pub fn parse_split(text: &str) -> Result<BTreeMap<u64, u32>, PolicyError> {
    let mut split = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (version, weight) =
            part.split_once(':').ok_or_else(|| PolicyError(format!("`{part}` is not version:weight")))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .ok()
            .filter(|&w| w <= 1_000_000)
            .ok_or_else(|| PolicyError(format!("`{weight}` is not a weight from 0 to 1000000")))?;
        if split.insert(parse_version(version)?, weight).is_some() {
            return Err(PolicyError(format!("version {version} appears twice in the split")));
        }
    }
    Ok(split)
}

fn parse_shadow(text: &str) -> Result<Shadow, PolicyError> {
    let parts: Vec<&str> = text.split(':').map(str::trim).collect();
    let (version, fraction, budget) = match parts.as_slice() {
        [v, f] => (v, f, None),
        [v, f, b] => (v, f, Some(b)),
        _ => return Err(PolicyError(format!("`{text}` is not version:fraction[:budget]"))),
    };
    let fraction: f64 = fraction.parse().map_err(|_| PolicyError(format!("`{fraction}` is not a fraction")))?;
    let budget = match budget {
        None => DEFAULT_SHADOW_BUDGET,
        Some(b) => b.parse().map_err(|_| PolicyError(format!("`{b}` is not a budget")))?,
    };
    Ok(Shadow { version: parse_version(version)?, fraction, budget })
}

impl fmt::Display for TrafficPolicy {
    /// The split as the config writes it (`latest` when empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(v) = self.pinned {
            return write!(f, "pinned:{v}");
        }
        if self.split.is_empty() {
            return write!(f, "latest");
        }
        let parts: Vec<String> = self.split.iter().map(|(v, w)| format!("{v}:{w}")).collect();
        write!(f, "{}", parts.join(","))
    }
}

/// A stable 64-bit draw from a sticky key: FNV-1a, then a finalizer so nearby keys spread.
pub fn sticky_draw(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The version a request that names none goes to: `ready` lists the ready versions in ascending order, `draw`
/// is uniform over u64 (random, or [`sticky_draw`]). `None` when nothing is ready.
pub fn choose(policy: &TrafficPolicy, ready: &[u64], draw: u64) -> Option<u64> {
    let latest = ready.last().copied();
    if let Some(pinned) = policy.pinned {
        return if ready.contains(&pinned) { Some(pinned) } else { latest };
    }
    let total: u64 = policy.split.iter().filter(|(v, _)| ready.contains(v)).map(|(_, &w)| u64::from(w)).sum();
    if total == 0 {
        return latest;
    }
    // Multiply-shift maps the draw onto [0, total) without modulo bias worth measuring.
    let mut point = ((u128::from(draw) * u128::from(total)) >> 64) as u64;
    for (&version, &weight) in policy.split.iter().filter(|(v, _)| ready.contains(v)) {
        if point < u64::from(weight) {
            return Some(version);
        }
        point -= u64::from(weight);
    }
    latest
}

#[cfg(test)]
mod tests;
