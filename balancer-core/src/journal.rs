//! The journal: an optional, bounded record of every call a driver made and what the core
//! answered, so that two drivers can be compared call for call.
//!
//! Entries carry no timestamps (each driver has its own clock), and a timeout call is
//! recorded only when it ended something: drivers wake at different moments, and a wake
//! that changes nothing is not a decision.

use std::collections::VecDeque;
use std::time::Duration;

use crate::backend::BackendId;
use crate::error::CoreError;
use crate::event::{AfterTry, Decision, Outcome, RequestId, TryReport};
use crate::health::HealthTransition;

/// The longest journal a scheduler keeps; older entries are dropped (and counted) first.
pub const MAX_JOURNAL_ENTRIES: usize = 1 << 20;

/// One call and its answer.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalEntry {
    /// `handle_work`: a new request's first try.
    Work {
        /// The answer.
        decision: Decision,
    },
    /// `handle_retry_work`: the next try of the request whose try `after` failed.
    RetryWork {
        /// The failed try.
        after: RequestId,
        /// The answer (or the error, as text).
        decision: Result<Decision, CoreError>,
    },
    /// `handle_done`: a try ended.
    Done {
        /// The try.
        request: RequestId,
        /// What the driver reported.
        report: TryReport,
        /// What the core made of it.
        answer: Result<DoneAnswer, CoreError>,
    },
    /// `handle_abandon`: a request waiting for its retry was given up by the driver.
    Abandon {
        /// The failed try it waited after.
        request: RequestId,
        /// Whether the core knew it.
        known: bool,
    },
    /// `handle_health_check`.
    Health {
        /// The backend probed.
        backend: BackendId,
        /// Whether the probe passed.
        passed: bool,
        /// The change it made, if any.
        transition: Result<Option<HealthTransition>, CoreError>,
    },
    /// `handle_timeout` (or the same step inside a work call) that ended ejections.
    Timeout {
        /// How many ejections it ended.
        ejections_ended: u32,
    },
    /// `reconcile`: a desired backend set went in.
    Reconcile {
        /// Backends added, in the order of the desired set.
        added: Vec<BackendId>,
        /// Backends whose weight changed.
        reweighted: Vec<BackendId>,
        /// Leaving backends that were wanted again.
        restored: Vec<BackendId>,
        /// Backends now leaving: drained, removed at their last done.
        leaving: Vec<BackendId>,
        /// Backends removed at once (leaving with nothing in flight).
        removed: Vec<BackendId>,
    },
    /// An operator's change to one backend.
    Backend {
        /// Which one (for an add: the new id, or the error).
        backend: Result<BackendId, CoreError>,
        /// What changed.
        change: BackendChange,
    },
    /// `reconfigure`: new settings, same backends.
    Reconfigure,
}

/// What an operator call did to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChange {
    /// `add_backend` with this weight.
    Added {
        /// Its weight.
        weight: u32,
    },
    /// `remove_backend`, with the requests it orphaned.
    Removed {
        /// In flight on it when it went.
        orphaned: u32,
    },
    /// `drain`.
    Drained,
    /// `undrain`.
    Undrained,
    /// `set_up`.
    SetUp {
        /// Up or down.
        up: bool,
    },
    /// `set_weight`.
    Weight {
        /// The new weight.
        weight: u32,
    },
    /// The call was refused.
    Refused,
}

/// What the core answered to a done, without the driver's clock in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoneAnswer {
    /// How the core counted the try.
    pub outcome: Outcome,
    /// Whether the done ejected its backend.
    pub ejected: bool,
    /// Whether the done removed its (leaving) backend.
    pub removed: bool,
    /// Finished, or retry after the backoff.
    pub next: AfterTry,
}

impl DoneAnswer {
    /// The backoff, if the answer was to retry.
    pub fn backoff(&self) -> Option<Duration> {
        match self.next {
            AfterTry::Retry { backoff } => Some(backoff),
            AfterTry::Finished { .. } => None,
        }
    }
}

/// A bounded ring of entries.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    entries: VecDeque<JournalEntry>,
    capacity: usize,
    dropped: u64,
}

impl Journal {
    /// A journal keeping the latest `capacity` entries (at most [`MAX_JOURNAL_ENTRIES`]).
    pub fn new(capacity: usize) -> Journal {
        let capacity = capacity.clamp(1, MAX_JOURNAL_ENTRIES);
        Journal {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, entry: JournalEntry) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(entry);
    }

    /// The entries kept, oldest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &JournalEntry> {
        self.entries.iter()
    }

    /// Entries dropped because the journal was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes the entries out, leaving the journal empty (and its drop count as it was).
    pub fn drain(&mut self) -> Vec<JournalEntry> {
        self.entries.drain(..).collect()
    }
}
