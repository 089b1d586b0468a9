use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::guard::{GuardPolicy, GuardState};
use super::*;

/// A deterministic stream of uniform u64 draws (splitmix64), standing in for the request path's RNG.
fn draws(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn split(pairs: &[(u64, u32)]) -> TrafficPolicy {
    TrafficPolicy { split: pairs.iter().copied().collect(), ..TrafficPolicy::default() }
}

#[test]
fn latest_is_the_newest_ready_version() {
    let p = TrafficPolicy::default();
    assert_eq!(choose(&p, &[1, 2, 3], 7), Some(3));
    assert_eq!(choose(&p, &[], 7), None);
    assert!(p.is_latest());
}

#[test]
fn a_pinned_version_takes_everything_while_ready() {
    let p = TrafficPolicy { pinned: Some(1), ..split(&[(1, 10), (2, 90)]) };
    for d in draws(1).take(100) {
        assert_eq!(choose(&p, &[1, 2], d), Some(1));
    }
    assert_eq!(choose(&p, &[2], 5), Some(2), "falls back to latest when the pinned version is not ready");
}

#[test]
fn a_90_10_split_lands_within_tolerance() {
    let p = split(&[(1, 90), (2, 10)]);
    let n = 20_000;
    let twos = draws(42).take(n).filter(|&d| choose(&p, &[1, 2], d) == Some(2)).count();
    // Binomial(20000, 0.1): sd ~42; 5 sd is ~1%.
    assert!((twos as f64 / n as f64 - 0.10).abs() < 0.011, "{twos}");
}

#[test]
fn config_parameters_describe_the_policy() {
    let params: BTreeMap<String, String> = [
        (keys::SPLIT, "1:90, 2:10"),
        (keys::PIN_HEADER, "X-Model-Version"),
        (keys::STICKY_HEADER, "x-user-id"),
        (keys::SHADOW, "3:0.25:4"),
        (keys::GUARD, "error_rate=0.1,p99_ratio=3,window_secs=10,min_requests=20"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let p = TrafficPolicy::from_parameters(&params).unwrap();
    assert_eq!(p.split, [(1, 90), (2, 10)].into_iter().collect());
    assert_eq!(p.pin_header.as_deref(), Some("x-model-version"));
    assert_eq!(p.sticky_header.as_deref(), Some("x-user-id"));
    assert_eq!(p.shadow, Some(Shadow { version: 3, fraction: 0.25, budget: 4 }));
    let g = p.guard.unwrap();
    assert_eq!((g.max_error_rate_increase, g.max_p99_ratio, g.min_requests), (0.1, 3.0, 20));
    assert_eq!(g.window, Duration::from_secs(10));
    assert!(TrafficPolicy::from_parameters(&BTreeMap::new()).unwrap().is_latest());
}

#[test]
fn bad_policies_are_refused_with_the_reason() {
    for (key, value) in [
        (keys::SPLIT, "1:90,x:10"),
        (keys::SPLIT, "1:0,2:0"),
        (keys::SPLIT, "1:90,1:10"),
        (keys::SPLIT, "1-90"),
        (keys::SPLIT, "1:-5"),
        (keys::PINNED, "latest"),
        (keys::PIN_HEADER, "x user"),
        (keys::SHADOW, "2:1.5"),
        (keys::SHADOW, "2"),
        (keys::SHADOW, "2:0.1:0"),
        (keys::SHADOW, "2:0.1:4611686018427387904"),
        (keys::GUARD, "error_rate=2"),
        (keys::GUARD, "p99_ratio=0.5"),
        (keys::GUARD, "colour=blue"),
        (keys::GUARD, "window_secs=0"),
    ] {
        let params = [(key.to_string(), value.to_string())].into_iter().collect();
        assert!(TrafficPolicy::from_parameters(&params).is_err(), "{key}={value}");
    }
}

proptest! {
    #[test]
    fn weights_converge(weights in proptest::collection::vec(0u32..100, 2..5), seed in any::<u64>()) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        let pairs: Vec<(u64, u32)> = weights.iter().enumerate().map(|(i, &w)| (i as u64 + 1, w)).collect();
        let p = split(&pairs);
        let ready: Vec<u64> = pairs.iter().map(|(v, _)| *v).collect();
        let n = 20_000;
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for d in draws(seed).take(n) {
            *counts.entry(choose(&p, &ready, d).unwrap()).or_default() += 1;
        }
        let total: u32 = weights.iter().sum();
        for (v, w) in pairs {
            let share = f64::from(w) / f64::from(total);
            let got = *counts.get(&v).unwrap_or(&0) as f64 / n as f64;
            // 5 standard deviations of a binomial share, plus a hair.
            let tolerance = 5.0 * (share * (1.0 - share) / n as f64).sqrt() + 1e-3;
            prop_assert!((got - share).abs() <= tolerance, "version {} got {} want {}", v, got, share);
            if w == 0 {
                prop_assert_eq!(got, 0.0);
            }
        }
    }

    #[test]
    fn versions_that_are_not_ready_get_nothing(
        weights in proptest::collection::vec(1u32..100, 1..5),
        ready_mask in any::<u8>(),
        draw in any::<u64>(),
    ) {
        let pairs: Vec<(u64, u32)> = weights.iter().enumerate().map(|(i, &w)| (i as u64 + 1, w)).collect();
        let ready: Vec<u64> = pairs.iter().map(|(v, _)| *v).filter(|v| ready_mask & (1 << v) != 0).collect();
        let got = choose(&split(&pairs), &ready, draw);
        match ready.last() {
            None => prop_assert_eq!(got, None),
            Some(_) => prop_assert!(ready.contains(&got.unwrap())),
        }
    }

    #[test]
    fn sticky_keys_are_stable(key in proptest::collection::vec(any::<u8>(), 0..40)) {
        let p = split(&[(1, 50), (2, 30), (3, 20)]);
        let first = choose(&p, &[1, 2, 3], sticky_draw(&key));
        for _ in 0..3 {
            prop_assert_eq!(choose(&p, &[1, 2, 3], sticky_draw(&key)), first);
        }
    }
}

#[test]
fn sticky_keys_spread_by_weight() {
    let p = split(&[(1, 80), (2, 20)]);
    let n = 10_000;
    let twos = (0..n).filter(|i| choose(&p, &[1, 2], sticky_draw(format!("user-{i}").as_bytes())) == Some(2)).count();
    assert!((twos as f64 / n as f64 - 0.2).abs() < 0.025, "{twos}");
}

#[test]
fn changing_weights_mid_stream_always_yields_a_ready_version() {
    let mut p = split(&[(1, 100), (2, 0)]);
    for (i, d) in draws(9).take(10_000).enumerate() {
        if i % 100 == 0 {
            let w = (i / 100) as u32;
            p = split(&[(1, 100 - w.min(100)), (2, w.min(100))]);
        }
        assert!(matches!(choose(&p, &[1, 2], d), Some(1 | 2)));
    }
}

fn guard() -> GuardPolicy {
    GuardPolicy { max_error_rate_increase: 0.05, max_p99_ratio: 2.0, window: Duration::from_secs(10), min_requests: 20 }
}

#[test]
fn a_canary_with_errors_is_rolled_back() {
    let (policy, mut state, t0) = (guard(), GuardState::default(), Instant::now());
    for i in 0..100 {
        let now = t0 + Duration::from_millis(i * 10);
        state.record(&policy, 1, true, Duration::from_millis(2), now);
        state.record(&policy, 2, i % 5 != 0, Duration::from_millis(2), now); // 20% errors
    }
    let verdict = state.verdict(&policy, 1, 2, t0 + Duration::from_secs(1));
    assert!(verdict.as_deref().is_some_and(|v| v.contains("error rate 20.0%")), "{verdict:?}");
}

#[test]
fn a_slow_canary_is_rolled_back_and_a_healthy_one_is_not() {
    let (policy, t0) = (guard(), Instant::now());
    let mut slow = GuardState::default();
    let mut healthy = GuardState::default();
    for i in 0..50 {
        let now = t0 + Duration::from_millis(i * 10);
        for s in [&mut slow, &mut healthy] {
            s.record(&policy, 1, true, Duration::from_millis(2), now);
        }
        slow.record(&policy, 2, true, Duration::from_millis(9), now);
        healthy.record(&policy, 2, true, Duration::from_micros(2100), now);
    }
    let now = t0 + Duration::from_secs(1);
    assert!(slow.verdict(&policy, 1, 2, now).is_some_and(|v| v.contains("p99")));
    assert_eq!(healthy.verdict(&policy, 1, 2, now), None);
}

#[test]
fn too_few_requests_or_old_ones_decide_nothing() {
    let (policy, mut state, t0) = (guard(), GuardState::default(), Instant::now());
    for _ in 0..10 {
        state.record(&policy, 1, true, Duration::from_millis(1), t0);
        state.record(&policy, 2, false, Duration::from_millis(1), t0);
    }
    assert_eq!(state.verdict(&policy, 1, 2, t0), None, "below min_requests");
    for _ in 0..30 {
        state.record(&policy, 1, true, Duration::from_millis(1), t0);
        state.record(&policy, 2, false, Duration::from_millis(1), t0);
    }
    assert!(state.verdict(&policy, 1, 2, t0).is_some());
    assert_eq!(state.verdict(&policy, 1, 2, t0 + Duration::from_secs(11)), None, "outside the window");
}
