//! Round robin; smooth weighted round robin (nginx's algorithm) when weights differ.

use crate::backend::BackendTable;

/// Takes eligible backends in turn. With uniform weights a cursor makes each pick O(1);
/// with differing weights nginx's smooth weighted round robin spreads the heavy backends'
/// turns evenly (weights 5,1,1 give a a b a c a a, not a a a a a b c), at O(n) per pick.
#[derive(Clone, Debug, Default)]
pub struct SmoothRoundRobin {
    cursor: usize,
    /// Per slot: nginx's `current_weight`.
    current: Vec<i64>,
}

impl SmoothRoundRobin {
    /// A slot entering rotation starts with no credit, as in nginx.
    pub fn on_eligible(&mut self, index: u32) {
        if let Some(current) = self.current.get_mut(index as usize) {
            *current = 0;
        }
    }

    /// Picks a slot index among the eligible ones.
    pub fn pick(&mut self, table: &BackendTable) -> Option<u32> {
        let eligible = &table.eligible;
        if eligible.is_empty() {
            return None;
        }
        if table.weights_uniform() {
            let position = self.cursor % eligible.len();
            self.cursor = position + 1;
            return Some(eligible[position]);
        }
        if self.current.len() < table.slots.len() {
            self.current.resize(table.slots.len(), 0);
        }
        let mut best: Option<u32> = None;
        for &index in eligible {
            let weight = i64::from(table.slots[index as usize].weight);
            self.current[index as usize] += weight;
            if best.is_none_or(|b| self.current[index as usize] > self.current[b as usize]) {
                best = Some(index);
            }
        }
        let best = best?;
        self.current[best as usize] -= table.eligible_weight_sum as i64;
        Some(best)
    }
}
