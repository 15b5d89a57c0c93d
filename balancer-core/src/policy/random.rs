//! Random choice in proportion to weight, with the caller's RNG.

use rand::Rng;

use crate::backend::BackendTable;

/// Uniform over eligible backends when weights are equal (O(1)); otherwise a draw over
/// cumulative weights (O(log n)), rebuilt only when the eligible set or a weight changes.
#[derive(Clone, Debug, Default)]
pub struct WeightedRandom {
    cumulative: Vec<u64>,
    built_for_version: Option<u64>,
}

impl WeightedRandom {
    /// Picks a slot index among the eligible ones.
    pub fn pick<R: Rng + ?Sized>(&mut self, table: &BackendTable, rng: &mut R) -> Option<u32> {
        let eligible = &table.eligible;
        if eligible.is_empty() {
            return None;
        }
        if table.weights_uniform() {
            return Some(eligible[rng.random_range(0..eligible.len())]);
        }
        if self.built_for_version != Some(table.eligible_version) {
            self.cumulative.clear();
            let mut sum = 0u64;
            for &index in eligible {
                sum += u64::from(table.slots[index as usize].weight);
                self.cumulative.push(sum);
            }
            self.built_for_version = Some(table.eligible_version);
        }
        let ticket = rng.random_range(0..table.eligible_weight_sum);
        let position = self.cumulative.partition_point(|&upto| upto <= ticket);
        Some(eligible[position])
    }
}
