//! Slow start and panic mode: how returning backends ramp up, and what happens when too few are healthy.

use std::time::Duration;

use crate::time::Timestamp;

/// Slow start: a backend that comes back (health check up, ejection over, or added to a pool
/// that is already serving) takes a growing share of its traffic over `window`, instead of
/// being flooded because it has nothing pending.
///
/// Each time a policy chooses a warming backend, the choice stands with probability
/// `max(min_weight_percent, elapsed ÷ window)`, drawn from the caller's RNG; otherwise the
/// policy chooses again without it. The ramp is linear and never decreases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowStartConfig {
    /// How long the ramp lasts.
    pub window: Duration,
    /// The share it starts at, in percent of full.
    pub min_weight_percent: u8,
}

impl Default for SlowStartConfig {
    fn default() -> Self {
        SlowStartConfig {
            window: Duration::from_secs(30),
            min_weight_percent: 10,
        }
    }
}

impl SlowStartConfig {
    /// The share of traffic a backend warming since `since` takes at `now`, in `[min, 1]`.
    pub fn ramp(&self, since: Timestamp, now: Timestamp) -> f64 {
        let floor = f64::from(self.min_weight_percent.min(100)) / 100.0;
        let window_ns = self.window.as_nanos() as f64;
        if window_ns <= 0.0 {
            return 1.0;
        }
        let progress = now.saturating_since(since).as_nanos() as f64 / window_ns;
        progress.clamp(floor, 1.0)
    }
}

/// Whether a pool with `available` of `candidates` backends able to take work is in panic:
/// below the threshold, requests spread over every backend that is not draining or full,
/// healthy or not (Envoy's panic threshold), rather than crush the few that are left.
pub(crate) fn in_panic(threshold_percent: Option<u8>, available: usize, candidates: usize) -> bool {
    match threshold_percent {
        Some(percent) if candidates > 0 => {
            available * 100 < usize::from(percent.min(100)) * candidates
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_is_linear_from_the_floor_to_one() {
        let config = SlowStartConfig {
            window: Duration::from_secs(10),
            min_weight_percent: 20,
        };
        let at = |s: u64| Timestamp::from_nanos(s * 1_000_000_000);
        assert_eq!(config.ramp(at(0), at(0)), 0.2);
        assert_eq!(config.ramp(at(0), at(5)), 0.5);
        assert_eq!(config.ramp(at(0), at(10)), 1.0);
        assert_eq!(config.ramp(at(0), at(99)), 1.0);
    }

    #[test]
    fn panic_below_the_threshold_only() {
        assert!(!in_panic(None, 0, 4));
        assert!(in_panic(Some(50), 1, 4));
        assert!(!in_panic(Some(50), 2, 4));
        assert!(!in_panic(Some(50), 0, 0));
    }
}
