//! The backend table: identities, administrative state and the load measurement policies read.

use std::collections::BTreeMap;
use std::fmt;

use crate::load::PeakEwma;
use crate::time::Timestamp;

/// Most backends one scheduler holds. Bounds every per-backend vector; far above any real pool.
pub const MAX_BACKENDS: usize = 1 << 20;

/// Largest weight a backend may have. Keeps `pending * weight` products inside `u64`.
pub const MAX_WEIGHT: u32 = 1 << 16;

/// A stable name for a backend.
///
/// Ids are an index plus a generation: a removed backend's slot may be reused, but with a
/// new generation, so an id is never reused while a request dispatched to it may still be
/// in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl BackendId {
    /// The slot index: dense, small, stable while the backend exists. Useful to index arrays.
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// How many backends held this slot before this one.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.generation == 0 {
            write!(f, "b{}", self.index)
        } else {
            write!(f, "b{}.{}", self.index, self.generation)
        }
    }
}

/// Whether a backend takes new work, as the operator and health checks set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Takes new work.
    Up,
    /// Marked down (e.g. by a health check): takes no new work; in-flight work finishes.
    Down,
    /// Draining: takes no new work; in-flight work finishes. Drained once `pending` is zero.
    Draining,
}

/// A read-only copy of one backend's state and load, for drivers, reports and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackendSnapshot {
    /// The backend.
    pub id: BackendId,
    /// Its state; `Draining` wins over `Down` when both apply.
    pub state: BackendState,
    /// Its weight.
    pub weight: u32,
    /// Requests dispatched to it and not yet done.
    pub pending: u32,
    /// The peak-EWMA latency estimate at the time asked, in nanoseconds. It decays towards
    /// zero while no response arrives (so an idle backend is tried again): see
    /// `ewma_updated_at`.
    pub ewma_ns: f64,
    /// When the estimate last took a latency sample (or was seeded, when the backend was added).
    pub ewma_updated_at: Timestamp,
    /// Requests dispatched to it over its life.
    pub dispatched: u64,
    /// Requests done with success.
    pub succeeded: u64,
    /// Requests done with a failure.
    pub failed: u64,
    /// Takes new work now: up, not draining, not ejected, under its in-flight cap.
    pub eligible: bool,
    /// Ejected by outlier detection until this time.
    pub ejected_until: Option<Timestamp>,
    /// Failures in a row (reset by a success).
    pub consecutive_failures: u32,
    /// In slow start since then.
    pub warming_since: Option<Timestamp>,
    /// Ejections so far, less those forgiven by time back in rotation (see `OutlierConfig`).
    pub times_ejected: u32,
    /// Gone from the desired set (`Scheduler::reconcile`): draining, and removed by the core
    /// at its last done.
    pub leaving: bool,
}

/// One slot of the table. A slot with `live == false` is free (its backend was removed).
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub generation: u32,
    pub live: bool,
    pub weight: u32,
    pub up: bool,
    pub draining: bool,
    pub pending: u32,
    pub ewma: PeakEwma,
    pub dispatched: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Outlier detection: ejected until then.
    pub ejected_until: Option<Timestamp>,
    pub consecutive_failures: u32,
    /// Ejections so far, less one for each base ejection time spent back in rotation.
    pub times_ejected: u32,
    /// When the last ejection ended.
    pub returned_at: Timestamp,
    /// Active health: probe results in a row of the kind that would change `up`.
    pub probe_streak: u32,
    /// At its per-backend in-flight cap.
    pub full: bool,
    /// Set aside for the duration of one retry dispatch.
    pub excluded: bool,
    /// Slow start: warming since then.
    pub warming_since: Option<Timestamp>,
    /// Gone from the desired set: draining until its last done, then removed.
    pub leaving: bool,
}

impl Slot {
    pub fn eligible(&self) -> bool {
        self.live
            && self.up
            && !self.draining
            && self.ejected_until.is_none()
            && !self.full
            && !self.excluded
    }
}

/// Absent marker for positions in the eligible list.
const NOT_ELIGIBLE: u32 = u32::MAX;

/// All backends of one scheduler and the measurement of their load.
///
/// Measurement is kept apart from policy: this table knows how busy each backend is; the
/// policies in [`crate::policy`] decide over it.
#[derive(Clone, Debug, Default)]
pub(crate) struct BackendTable {
    pub(crate) slots: Vec<Slot>,
    free: Vec<u32>,
    /// Indices of eligible slots, dense, for O(1) random sampling and cursors.
    pub(crate) eligible: Vec<u32>,
    /// Position of each slot in `eligible`, or `NOT_ELIGIBLE`.
    eligible_pos: Vec<u32>,
    /// Weight → number of eligible backends with it; uniform weights iff it has ≤ 1 key.
    eligible_weights: BTreeMap<u32, u32>,
    /// Sum of eligible weights.
    pub(crate) eligible_weight_sum: u64,
    /// Bumped whenever the eligible set or an eligible weight changes, so policies can cache.
    pub(crate) eligible_version: u64,
    /// Bumped whenever a backend is added or removed or a weight changes (eligible or not),
    /// so that the consistent-hash ring knows when to rebuild.
    pub(crate) membership_version: u64,
    live: usize,
}

impl BackendTable {
    pub(crate) fn insert(&mut self, weight: u32, initial_ewma: PeakEwma) -> Option<BackendId> {
        let fresh = |generation| Slot {
            generation,
            live: true,
            weight,
            up: true,
            draining: false,
            pending: 0,
            ewma: initial_ewma,
            dispatched: 0,
            succeeded: 0,
            failed: 0,
            ejected_until: None,
            consecutive_failures: 0,
            times_ejected: 0,
            returned_at: Timestamp::ZERO,
            probe_streak: 0,
            full: false,
            excluded: false,
            warming_since: None,
            leaving: false,
        };
        let index = match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                *slot = fresh(slot.generation);
                index
            }
            None => {
                if self.slots.len() >= MAX_BACKENDS {
                    return None;
                }
                self.slots.push(fresh(0));
                self.eligible_pos.push(NOT_ELIGIBLE);
                (self.slots.len() - 1) as u32
            }
        };
        self.live += 1;
        self.membership_version += 1;
        self.add_eligible(index);
        Some(BackendId {
            index,
            generation: self.slots[index as usize].generation,
        })
    }

    /// Frees the slot; the next backend in it gets a new generation.
    pub(crate) fn remove(&mut self, index: u32) {
        self.remove_eligible(index);
        let slot = &mut self.slots[index as usize];
        slot.live = false;
        slot.pending = 0;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.live -= 1;
        self.membership_version += 1;
    }

    /// The slot index of `id` if it names a live backend.
    pub(crate) fn resolve(&self, id: BackendId) -> Option<usize> {
        let slot = self.slots.get(id.index as usize)?;
        (slot.live && slot.generation == id.generation).then_some(id.index as usize)
    }

    pub(crate) fn id_of(&self, index: u32) -> BackendId {
        BackendId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    /// Number of backends in the table.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Number of backends that take new work.
    pub fn eligible_len(&self) -> usize {
        self.eligible.len()
    }

    /// True when every eligible backend has the same weight.
    pub(crate) fn weights_uniform(&self) -> bool {
        self.eligible_weights.len() <= 1
    }

    /// Puts the slot in or out of the eligible list to match its state. Returns whether it changed.
    pub(crate) fn refresh_eligibility(&mut self, index: u32) -> bool {
        let should = self.slots[index as usize].eligible();
        let is = self.eligible_pos[index as usize] != NOT_ELIGIBLE;
        match (is, should) {
            (false, true) => self.add_eligible(index),
            (true, false) => self.remove_eligible(index),
            _ => return false,
        }
        true
    }

    pub(crate) fn set_weight(&mut self, index: u32, weight: u32) {
        let was_eligible = self.eligible_pos[index as usize] != NOT_ELIGIBLE;
        if was_eligible {
            self.remove_eligible(index);
        }
        self.slots[index as usize].weight = weight;
        self.membership_version += 1;
        if was_eligible {
            self.add_eligible(index);
        }
    }

    fn add_eligible(&mut self, index: u32) {
        if !self.slots[index as usize].eligible()
            || self.eligible_pos[index as usize] != NOT_ELIGIBLE
        {
            return;
        }
        self.eligible_pos[index as usize] = self.eligible.len() as u32;
        self.eligible.push(index);
        let weight = self.slots[index as usize].weight;
        *self.eligible_weights.entry(weight).or_insert(0) += 1;
        self.eligible_weight_sum += u64::from(weight);
        self.eligible_version += 1;
    }

    fn remove_eligible(&mut self, index: u32) {
        let pos = self.eligible_pos[index as usize];
        if pos == NOT_ELIGIBLE {
            return;
        }
        self.eligible.swap_remove(pos as usize);
        if let Some(&moved) = self.eligible.get(pos as usize) {
            self.eligible_pos[moved as usize] = pos;
        }
        self.eligible_pos[index as usize] = NOT_ELIGIBLE;
        let weight = self.slots[index as usize].weight;
        if let Some(count) = self.eligible_weights.get_mut(&weight) {
            *count -= 1;
            if *count == 0 {
                self.eligible_weights.remove(&weight);
            }
        }
        self.eligible_weight_sum -= u64::from(weight);
        self.eligible_version += 1;
    }

    pub(crate) fn snapshot(&self, index: u32, now: Timestamp, decay_ns: f64) -> BackendSnapshot {
        let slot = &self.slots[index as usize];
        let state = if slot.draining {
            BackendState::Draining
        } else if !slot.up {
            BackendState::Down
        } else {
            BackendState::Up
        };
        BackendSnapshot {
            id: self.id_of(index),
            state,
            weight: slot.weight,
            pending: slot.pending,
            ewma_ns: slot.ewma.estimate_ns(now, decay_ns),
            ewma_updated_at: slot.ewma.updated_at(),
            dispatched: slot.dispatched,
            succeeded: slot.succeeded,
            failed: slot.failed,
            eligible: slot.eligible(),
            ejected_until: slot.ejected_until,
            consecutive_failures: slot.consecutive_failures,
            warming_since: slot.warming_since,
            times_ejected: slot.times_ejected,
            leaving: slot.leaving,
        }
    }

    /// Indices of live slots, in index order.
    pub(crate) fn live_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(i, _)| i as u32)
    }

    /// Checks the eligible list, its positions and the weight histogram against the slots.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut weights: BTreeMap<u32, u32> = BTreeMap::new();
        let mut sum = 0u64;
        for (pos, &index) in self.eligible.iter().enumerate() {
            let slot = self
                .slots
                .get(index as usize)
                .ok_or_else(|| format!("eligible list names slot {index} beyond the table"))?;
            if !slot.eligible() {
                return Err(format!(
                    "slot {index} is in the eligible list but is removed, down or draining"
                ));
            }
            if self.eligible_pos[index as usize] != pos as u32 {
                return Err(format!("slot {index} has a stale eligible position"));
            }
            *weights.entry(slot.weight).or_insert(0) += 1;
            sum += u64::from(slot.weight);
        }
        let eligible_count = self.slots.iter().filter(|s| s.eligible()).count();
        if eligible_count != self.eligible.len() {
            return Err(format!(
                "{eligible_count} slots are eligible but the eligible list holds {}",
                self.eligible.len()
            ));
        }
        if weights != self.eligible_weights || sum != self.eligible_weight_sum {
            return Err("eligible weight bookkeeping disagrees with the slots".into());
        }
        let live = self.slots.iter().filter(|s| s.live).count();
        if live != self.live {
            return Err(format!(
                "{live} live slots but the count says {}",
                self.live
            ));
        }
        for slot in self.slots.iter().filter(|s| !s.live) {
            if slot.pending != 0 {
                return Err("a free slot has pending requests".into());
            }
        }
        Ok(())
    }
}
