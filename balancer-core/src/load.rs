//! Load measurement beside the pending count: a peak-sensitive EWMA of latency, decayed by `now`.

use crate::time::Timestamp;

/// A peak-sensitive exponentially weighted moving average of latency (tower's PeakEwma idea).
///
/// An observation above the estimate replaces it at once (peak sensitivity: a backend that
/// turns slow is avoided immediately); one below it is blended in with a weight that grows
/// with the time since the last update. Reading the estimate at `now` decays it towards zero,
/// so a backend that has been idle for a while is tried again. Unlike tower, the time is
/// always handed in: this type never reads a clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakEwma {
    estimate_ns: f64,
    updated_at: Timestamp,
}

impl PeakEwma {
    /// An estimate of `initial_ns` as of `now`.
    pub fn new(initial_ns: f64, now: Timestamp) -> Self {
        PeakEwma {
            estimate_ns: initial_ns.max(0.0),
            updated_at: now,
        }
    }

    /// The estimate as of `now`, decayed with time constant `decay_ns` since the last update.
    pub fn estimate_ns(&self, now: Timestamp, decay_ns: f64) -> f64 {
        let elapsed = now.as_nanos().saturating_sub(self.updated_at.as_nanos()) as f64;
        self.estimate_ns * (-elapsed / decay_ns).exp()
    }

    /// When the estimate last took an observation (or was seeded): reading it later gives a
    /// decayed value, so this says how much of it is a measurement.
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// Folds in one observed latency at `now`.
    pub fn observe(&mut self, now: Timestamp, latency_ns: f64, decay_ns: f64) {
        let latency_ns = latency_ns.max(0.0);
        if now < self.updated_at {
            // Out-of-order report: keep the newer state rather than travel back in time.
            return;
        }
        if latency_ns > self.estimate_ns {
            self.estimate_ns = latency_ns;
        } else {
            let elapsed = (now.as_nanos() - self.updated_at.as_nanos()) as f64;
            let decay = (-elapsed / decay_ns).exp();
            self.estimate_ns = self.estimate_ns * decay + latency_ns * (1.0 - decay);
        }
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_replaces_the_estimate_at_once() {
        let mut e = PeakEwma::new(1_000.0, Timestamp::ZERO);
        e.observe(Timestamp::from_nanos(10), 50_000.0, 1e9);
        assert_eq!(e.estimate_ns(Timestamp::from_nanos(10), 1e9), 50_000.0);
    }

    #[test]
    fn lower_observations_blend_in_by_elapsed_time() {
        let decay_ns = 1_000.0;
        let mut e = PeakEwma::new(10_000.0, Timestamp::ZERO);
        // One full time constant later, the old estimate keeps weight 1/e.
        e.observe(Timestamp::from_nanos(1_000), 0.0, decay_ns);
        let expected = 10_000.0 * (-1.0f64).exp();
        assert!((e.estimate_ns(Timestamp::from_nanos(1_000), decay_ns) - expected).abs() < 1e-6);
    }

    #[test]
    fn reading_decays_towards_zero_without_changing_state() {
        let e = PeakEwma::new(8_000.0, Timestamp::ZERO);
        let later = e.estimate_ns(Timestamp::from_nanos(5_000), 1_000.0);
        assert!(later < 8_000.0 * 0.01);
        assert_eq!(e.estimate_ns(Timestamp::ZERO, 1_000.0), 8_000.0);
    }

    #[test]
    fn out_of_order_reports_are_ignored() {
        let mut e = PeakEwma::new(1_000.0, Timestamp::from_nanos(100));
        e.observe(Timestamp::from_nanos(50), 9_000.0, 1e9);
        assert_eq!(e.estimate_ns(Timestamp::from_nanos(100), 1e9), 1_000.0);
    }
}
