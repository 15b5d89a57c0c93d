//! Power of two choices, over pending per weight or over peak-EWMA cost.

use rand::Rng;

use crate::backend::BackendTable;
use crate::time::Timestamp;

/// What "less loaded" means when comparing the two candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2cLoad {
    /// (pending + 1) ÷ weight.
    PendingPerWeight,
    /// (peak-EWMA latency + 1 ns) × (pending + 1) ÷ weight, as tower's PeakEwma balancer.
    PeakEwma,
}

/// Samples two distinct eligible backends with the caller's RNG and keeps the less loaded.
///
/// Ties go to the first draw. Sampling costs O(1) regardless of pool size.
#[derive(Clone, Debug)]
pub struct P2c {
    load: P2cLoad,
}

impl P2c {
    /// A p2c policy comparing by `load`.
    pub fn new(load: P2cLoad) -> Self {
        P2c { load }
    }

    /// Picks a slot index among the eligible ones; also returns the candidate it beat.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        table: &BackendTable,
        now: Timestamp,
        decay_ns: f64,
        rng: &mut R,
    ) -> Option<(u32, Option<u32>)> {
        let (first, second) = sample_two(&table.eligible, rng)?;
        let Some(second) = second else {
            return Some((first, None));
        };
        let (a, b) = (&table.slots[first as usize], &table.slots[second as usize]);
        let second_is_lighter = match self.load {
            // Cross-multiplied so weights need no division: (pa+1)/wa > (pb+1)/wb.
            P2cLoad::PendingPerWeight => {
                u64::from(a.pending + 1) * u64::from(b.weight)
                    > u64::from(b.pending + 1) * u64::from(a.weight)
            }
            P2cLoad::PeakEwma => {
                let cost = |s: &crate::backend::Slot| {
                    (s.ewma.estimate_ns(now, decay_ns) + 1.0) * f64::from(s.pending + 1)
                        / f64::from(s.weight)
                };
                cost(a) > cost(b)
            }
        };
        Some(if second_is_lighter {
            (second, Some(first))
        } else {
            (first, Some(second))
        })
    }
}

/// Two distinct uniform draws from `items` (the second absent when there is only one item).
pub(crate) fn sample_two<R: Rng + ?Sized>(
    items: &[u32],
    rng: &mut R,
) -> Option<(u32, Option<u32>)> {
    match items.len() {
        0 => None,
        1 => Some((items[0], None)),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some((items[a], Some(items[b])))
        }
    }
}
