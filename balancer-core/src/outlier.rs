//! Passive health: consecutive failures eject a backend for a time that grows with each ejection.

use std::time::Duration;

/// Outlier detection in the manner of Envoy's `consecutive_5xx`: a backend whose requests fail
/// `consecutive_failures` times in a row is taken out of rotation for
/// `base_ejection × times ejected`, capped at `max_ejection`, provided no more than
/// `max_ejected_percent` of the pool is already ejected (at least one backend may always be).
///
/// Failures are the driver's `Outcome::Failure(_)`: connect errors, resets, timeouts, 5xx,
/// crashes. `Outcome::Cancelled` says nothing about the backend and is ignored; a success
/// resets the streak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend.
    pub consecutive_failures: u32,
    /// Ejection time for the first ejection; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// Longest one ejection may last.
    pub max_ejection: Duration,
    /// Most of the pool, in percent, that may be ejected at once (0 disables ejection).
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    /// Envoy's defaults, except 50% max ejected: small pools (the common case here) should
    /// still be able to shed a bad backend or two.
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// How many of `live` backends may be ejected at once.
    pub(crate) fn max_ejected(&self, live: usize) -> usize {
        if self.max_ejected_percent == 0 {
            return 0;
        }
        (live * usize::from(self.max_ejected_percent.min(100)) / 100).max(1)
    }

    /// How long the ejection that makes `times_ejected` ejections in all lasts.
    pub(crate) fn ejection_time(&self, times_ejected: u32) -> Duration {
        self.base_ejection
            .saturating_mul(times_ejected.max(1))
            .min(self.max_ejection)
    }
}
