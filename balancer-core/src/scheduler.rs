//! The work/done protocol: a request arrives, a decision comes back, exactly one done follows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::Rng;

use crate::backend::{BackendId, BackendSnapshot, BackendTable, MAX_BACKENDS, MAX_WEIGHT};
use crate::error::{CoreError, InvariantViolation};
use crate::event::{
    AfterTry, Completion, Decision, MethodClass, NoRetryReason, Outcome, RejectReason, Removal,
    RequestId, RequestInfo, TryEnd, TryReport,
};
use crate::explain::{
    Candidate, DecisionRecord, EXPLAIN_LIST_SKIPPED_UP_TO, EXPLAIN_SKIPPED_NAMED,
    EXPLAIN_TIE_LIMIT, SkipReason, Skipped,
};
use crate::health::{HealthCheckConfig, HealthTransition};
use crate::journal::{BackendChange, DoneAnswer, Journal, JournalEntry};
use crate::load::PeakEwma;
use crate::outlier::OutlierConfig;
use crate::policy::{Pick, Policy, PolicyKind};
use crate::retry::{self, EndedTry, RetryBudget, RetryConfig};
use crate::status::StatusSet;
use crate::time::Timestamp;
use crate::warmup::{self, SlowStartConfig};

/// Default bound on requests in flight in one scheduler. Above any connection limit a proxy
/// would set, and large enough for simulated queues at ρ close to 1; each entry is 24 bytes.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1 << 20;

/// How a scheduler is set up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Which policy chooses backends.
    pub policy: PolicyKind,
    /// Requests in flight beyond this are rejected with [`RejectReason::Overloaded`].
    pub max_in_flight: u32,
    /// Time constant of the peak-EWMA decay, in nanoseconds. Should be 10–100× a typical
    /// latency: shorter forgets peaks before they matter, longer punishes one slow reply for long.
    pub ewma_decay_ns: u64,
    /// Latency estimate a new backend starts with, in nanoseconds.
    pub ewma_initial_ns: u64,
    /// Circuit breaking: a backend with this many requests in flight takes no more until one
    /// finishes. `None`: no per-backend cap.
    pub max_pending_per_backend: Option<u32>,
    /// Passive health (outlier ejection). `None`: failures never eject a backend.
    pub outlier: Option<OutlierConfig>,
    /// Rise and fall thresholds for active health-check results.
    pub health_check: HealthCheckConfig,
    /// Retry decisions and budget. `None`: [`Scheduler::decide_retry`] always gives up.
    pub retry: Option<RetryConfig>,
    /// Slow start for backends that come back. `None`: they take full traffic at once.
    pub slow_start: Option<SlowStartConfig>,
    /// Panic threshold: when fewer than this percent of the non-draining backends can take
    /// work, spread requests over all of them that are not full, healthy or not. `None`: never.
    pub panic_threshold_percent: Option<u8>,
    /// Response statuses that count as the backend failing (for outlier ejection and the
    /// failure counters). Every 5xx by default.
    pub failure_status: StatusSet,
    /// consistent-hash: a backend takes at most this many times its share of the requests in
    /// flight (at least 1.0; 1.25 by default); `None`: no bound, keys never move for load.
    pub hash_load_factor: Option<f64>,
}

/// The consistent-hash policy's default bound on a backend's share of the load.
pub const DEFAULT_HASH_LOAD_FACTOR: f64 = 1.25;

impl SchedulerConfig {
    /// The defaults for `policy`.
    pub fn new(policy: PolicyKind) -> Self {
        SchedulerConfig {
            policy,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            ewma_decay_ns: 100_000_000,
            ewma_initial_ns: 1_000_000,
            max_pending_per_backend: None,
            outlier: None,
            health_check: HealthCheckConfig::default(),
            retry: None,
            slow_start: None,
            panic_threshold_percent: None,
            failure_status: StatusSet::class(5),
            hash_load_factor: Some(DEFAULT_HASH_LOAD_FACTOR),
        }
    }
}

/// Where a request is in its life.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// A try is on `backend`, counted in its pending.
    InFlight {
        backend: BackendId,
        dispatched_at: Timestamp,
    },
    /// A try failed and the core said to retry: waiting for the backoff, on no backend.
    Backoff { retry_at: Timestamp },
}

/// One request, from its first dispatch to its last done.
#[derive(Clone, Debug)]
struct Live {
    stage: Stage,
    info: RequestInfo,
    /// Retries made so far.
    retries: u32,
    /// Backends whose try failed; a retry never goes back to them. Empty (no allocation)
    /// until the first retry.
    tried: Vec<BackendId>,
}

#[derive(Clone, Debug)]
struct RequestSlot {
    /// The sequence number of the current (or last) try in the slot.
    seq: u64,
    entry: Option<Live>,
}

/// How a dispatch places its request in the slab.
enum Placement {
    /// A new request's first try.
    New(RequestInfo),
    /// The next try of the request in this slot, waiting after a backoff.
    Retry(u32),
}

/// What [`Scheduler::reconcile`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Backends added, with their keys, in the order of the desired set.
    pub added: Vec<(Box<str>, BackendId)>,
    /// Backends whose weight changed.
    pub reweighted: Vec<BackendId>,
    /// Leaving backends wanted again: undrained, with their state.
    pub restored: Vec<BackendId>,
    /// Backends gone from the set with requests in flight: drained, and removed by the done
    /// of their last request ([`Completion::removed`]).
    pub leaving: Vec<BackendId>,
    /// Backends gone from the set with nothing in flight: removed at once.
    pub removed: Vec<BackendId>,
}

/// One pool's scheduler: the backend set, its policy and the requests in flight.
///
/// Invariants (checked by [`Scheduler::check_invariants`]):
/// 1. the sum of live backends' pending counts plus orphaned requests equals the requests in flight;
/// 2. no request is dispatched to a backend that is down, draining or removed;
/// 3. pending counts never go below zero (a done without its dispatch is an error value);
/// 4. each policy's index holds exactly the eligible backends, at their true load;
/// 5. every dispatch is matched by exactly one done.
#[derive(Clone, Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    backends: BackendTable,
    policy: Policy,
    requests: Vec<RequestSlot>,
    free_requests: Vec<u32>,
    in_flight: u32,
    /// Requests waiting for the end of a retry backoff (on no backend).
    waiting: u32,
    /// In-flight requests whose backend was removed.
    orphaned: u32,
    /// Dispatches so far; the next request's sequence number.
    dispatches: u64,
    /// Backends at their per-backend cap.
    full: u32,
    /// Backends ejected by outlier detection.
    ejected: u32,
    /// Backends draining.
    draining: u32,
    /// Backends in slow start.
    warming: u32,
    /// Ends of ejections: (until, slot, generation). May hold stale entries for backends
    /// that were removed; at most one live entry per backend.
    ejections: BinaryHeap<Reverse<(Timestamp, u32, u32)>>,
    retry_budget: RetryBudget,
    /// The driver's name for each backend slot that [`Scheduler::reconcile`] manages.
    keys: Vec<Option<Box<str>>>,
    journal: Option<Journal>,
}

impl Scheduler {
    /// An empty scheduler. A `max_pending_per_backend` of 0 is taken as 1: a backend that
    /// may take no request at all is expressed by draining it.
    pub fn new(mut config: SchedulerConfig) -> Self {
        config.max_pending_per_backend = config.max_pending_per_backend.map(|cap| cap.max(1));
        Scheduler {
            policy: Policy::new(config.policy, config.hash_load_factor),
            config,
            backends: BackendTable::default(),
            requests: Vec::new(),
            free_requests: Vec::new(),
            in_flight: 0,
            waiting: 0,
            orphaned: 0,
            dispatches: 0,
            full: 0,
            ejected: 0,
            draining: 0,
            warming: 0,
            ejections: BinaryHeap::new(),
            retry_budget: RetryBudget::new(
                config
                    .retry
                    .map_or(Duration::from_secs(10), |r| r.budget_window),
            ),
            keys: Vec::new(),
            journal: None,
        }
    }

    /// Starts keeping a journal of every call and answer, the latest `capacity` of them
    /// (see [`crate::journal`]); replaces one already kept.
    pub fn enable_journal(&mut self, capacity: usize) {
        self.journal = Some(Journal::new(capacity));
    }

    /// The journal, if one is kept.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The journal, to take its entries out.
    pub fn journal_mut(&mut self) -> Option<&mut Journal> {
        self.journal.as_mut()
    }

    #[inline]
    fn note(&mut self, entry: impl FnOnce() -> JournalEntry) {
        if let Some(journal) = &mut self.journal {
            journal.push(entry());
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Changes the configuration in place, keeping the backends with their load, health,
    /// EWMA and counters, and the requests in flight (a config reload should not forget what
    /// the pool has learnt). A new policy starts its own index over the eligible backends;
    /// turning outlier detection off ends current ejections at `now`; turning slow start off
    /// ends warm-ups; a new per-backend cap applies at once.
    pub fn reconfigure(&mut self, now: Timestamp, mut config: SchedulerConfig) {
        config.max_pending_per_backend = config.max_pending_per_backend.map(|cap| cap.max(1));
        let old = std::mem::replace(&mut self.config, config);
        self.note(|| JournalEntry::Reconfigure);
        if old.policy != config.policy {
            self.policy = Policy::new(config.policy, config.hash_load_factor);
            for position in 0..self.backends.eligible.len() {
                let index = self.backends.eligible[position];
                let pending = self.backends.slots[index as usize].pending;
                self.policy.on_eligible(index, pending);
            }
        }
        let live: Vec<u32> = self.backends.live_indices().collect();
        for &index in &live {
            let slot = &self.backends.slots[index as usize];
            let full = config
                .max_pending_per_backend
                .is_some_and(|cap| slot.pending >= cap);
            if slot.full != full {
                if full {
                    self.full += 1;
                } else {
                    self.full -= 1;
                }
                self.update_index_state(index as usize, |slot| slot.full = full);
            }
            let slot = &self.backends.slots[index as usize];
            if config.outlier.is_none() && slot.ejected_until.is_some() {
                self.ejected -= 1;
                self.update_index_state(index as usize, |slot| {
                    slot.ejected_until = None;
                    slot.returned_at = now;
                });
            }
            let slot = &mut self.backends.slots[index as usize];
            if config.slow_start.is_none() && slot.warming_since.take().is_some() {
                self.warming -= 1;
            }
        }
        if config.outlier.is_none() {
            self.ejections.clear();
        }
        let window = |c: &SchedulerConfig| c.retry.map(|r| r.budget_window);
        if window(&old) != window(&config) {
            self.retry_budget = RetryBudget::new(
                config
                    .retry
                    .map_or(Duration::from_secs(10), |r| r.budget_window),
            );
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> PolicyKind {
        self.config.policy
    }

    /// Adds an up, undrained backend with `weight` and returns its id.
    ///
    /// Until a backend is removed, ids are handed out with dense indices 0, 1, 2, … in the
    /// order of the calls (drivers may index arrays by [`BackendId::index`]); after a removal
    /// the freed index is reused first, with a new generation.
    pub fn add_backend(&mut self, now: Timestamp, weight: u32) -> Result<BackendId, CoreError> {
        let added = self.insert_backend(now, weight);
        self.note(|| JournalEntry::Backend {
            backend: added.clone(),
            change: BackendChange::Added { weight },
        });
        added
    }

    fn insert_backend(&mut self, now: Timestamp, weight: u32) -> Result<BackendId, CoreError> {
        check_weight(weight)?;
        let initial = PeakEwma::new(self.config.ewma_initial_ns as f64, now);
        let id = self
            .backends
            .insert(weight, initial)
            .ok_or(CoreError::TooManyBackends)?;
        self.policy.on_eligible(id.index, 0);
        // A pool being set up takes its backends at full weight; one already serving
        // lets a newcomer warm up.
        if self.dispatches > 0 {
            self.start_warming(id.index as usize, now);
        }
        Ok(id)
    }

    /// Removes a backend at once. Its in-flight requests become orphans: their dones return
    /// [`CoreError::BackendRemoved`]. Use [`Scheduler::drain`] first for a graceful removal,
    /// or [`Scheduler::reconcile`], which removes a backend at its last done.
    pub fn remove_backend(&mut self, id: BackendId) -> Result<Removal, CoreError> {
        let removal = self.take_out(id);
        self.note(|| JournalEntry::Backend {
            backend: removal.as_ref().map(|_| id).map_err(Clone::clone),
            change: match &removal {
                Ok(r) => BackendChange::Removed {
                    orphaned: r.orphaned,
                },
                Err(_) => BackendChange::Refused,
            },
        });
        removal
    }

    fn take_out(&mut self, id: BackendId) -> Result<Removal, CoreError> {
        let index = self.resolve(id)?;
        let slot = &self.backends.slots[index];
        let pending = slot.pending;
        if slot.eligible() {
            self.policy.on_ineligible(id.index, pending);
        }
        self.full -= u32::from(slot.full);
        self.ejected -= u32::from(slot.ejected_until.is_some());
        self.draining -= u32::from(slot.draining);
        self.warming -= u32::from(slot.warming_since.is_some());
        self.backends.remove(id.index);
        if let Some(key) = self.keys.get_mut(index) {
            *key = None;
        }
        self.orphaned += pending;
        Ok(Removal { orphaned: pending })
    }

    /// Stops sending new work to the backend; in-flight requests finish normally.
    pub fn drain(&mut self, id: BackendId) -> Result<(), CoreError> {
        let result = self.update_state(id, |slot| slot.draining = true);
        self.note_change(id, &result, BackendChange::Drained);
        result
    }

    /// Undoes [`Scheduler::drain`]. A backend leaving the set (see [`Scheduler::reconcile`])
    /// stays drained: only a desired set that lists it again brings it back.
    pub fn undrain(&mut self, id: BackendId) -> Result<(), CoreError> {
        let result = self.update_state(id, |slot| slot.draining = slot.leaving);
        self.note_change(id, &result, BackendChange::Undrained);
        result
    }

    /// Marks the backend up (takes work) or down (takes none; in-flight requests finish).
    /// An operator's word: it also restarts the health-check streak.
    pub fn set_up(&mut self, id: BackendId, up: bool) -> Result<(), CoreError> {
        let result = self.update_state(id, |slot| {
            slot.up = up;
            slot.probe_streak = 0;
        });
        self.note_change(id, &result, BackendChange::SetUp { up });
        result
    }

    fn note_change(
        &mut self,
        id: BackendId,
        result: &Result<(), CoreError>,
        change: BackendChange,
    ) {
        self.note(|| JournalEntry::Backend {
            backend: result.clone().map(|()| id),
            change: if result.is_ok() {
                change
            } else {
                BackendChange::Refused
            },
        });
    }

    /// An active health-check result for the backend: `rise` passes in a row bring a down
    /// backend up, `fall` failures in a row take an up one down.
    pub fn handle_health_check(
        &mut self,
        now: Timestamp,
        id: BackendId,
        passed: bool,
    ) -> Result<Option<HealthTransition>, CoreError> {
        let transition = self.health_check(now, id, passed);
        self.note(|| JournalEntry::Health {
            backend: id,
            passed,
            transition: transition.clone(),
        });
        transition
    }

    fn health_check(
        &mut self,
        now: Timestamp,
        id: BackendId,
        passed: bool,
    ) -> Result<Option<HealthTransition>, CoreError> {
        let index = self.resolve(id)?;
        let HealthCheckConfig { rise, fall } = self.config.health_check;
        let slot = &mut self.backends.slots[index];
        // The streak counts results that argue for a change of state; others reset it.
        if passed != slot.up {
            slot.probe_streak += 1;
        } else {
            slot.probe_streak = 0;
        }
        let threshold = if slot.up { fall } else { rise };
        if slot.probe_streak < threshold.max(1) {
            return Ok(None);
        }
        self.update_state(id, |slot| {
            slot.up = passed;
            slot.probe_streak = 0;
        })?;
        if passed {
            self.start_warming(index, now);
        }
        Ok(Some(if passed {
            HealthTransition::WentUp
        } else {
            HealthTransition::WentDown
        }))
    }

    /// Changes the backend's weight.
    pub fn set_weight(&mut self, id: BackendId, weight: u32) -> Result<(), CoreError> {
        let result = check_weight(weight).and_then(|()| {
            let index = self.resolve(id)?;
            self.backends.set_weight(index as u32, weight);
            Ok(())
        });
        self.note_change(id, &result, BackendChange::Weight { weight });
        result
    }

    /// Makes the set of keyed backends what `desired` lists, as (key, weight): a new key is
    /// added (warming up if the pool is serving), a listed one gets its weight, a leaving one
    /// listed again is undrained with its state; a keyed backend not listed leaves: removed at
    /// once if nothing is in flight on it, otherwise drained and removed by its last done.
    /// Backends added with [`Scheduler::add_backend`] have no key and are left alone.
    ///
    /// A later entry for the same key wins. Misuse (a weight out of range, more than
    /// [`MAX_BACKENDS`] backends) is refused before anything changes.
    pub fn reconcile(
        &mut self,
        now: Timestamp,
        desired: &[(&str, u32)],
    ) -> Result<Reconciliation, CoreError> {
        let result = self.apply_desired(now, desired);
        self.note(|| match &result {
            Ok(done) => JournalEntry::Reconcile {
                added: done.added.iter().map(|(_, id)| *id).collect(),
                reweighted: done.reweighted.clone(),
                restored: done.restored.clone(),
                leaving: done.leaving.clone(),
                removed: done.removed.clone(),
            },
            Err(error) => JournalEntry::Backend {
                backend: Err(error.clone()),
                change: BackendChange::Refused,
            },
        });
        result
    }

    fn apply_desired(
        &mut self,
        now: Timestamp,
        desired: &[(&str, u32)],
    ) -> Result<Reconciliation, CoreError> {
        let mut wanted: std::collections::HashMap<&str, u32> =
            std::collections::HashMap::with_capacity(desired.len());
        for &(key, weight) in desired {
            check_weight(weight)?;
            wanted.insert(key, weight);
        }
        let mut present: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for (index, key) in self.keys.iter().enumerate() {
            if let Some(key) = key
                && self.backends.slots[index].live
            {
                present.insert(key, index as u32);
            }
        }
        let new = wanted.keys().filter(|k| !present.contains_key(*k)).count();
        if self.backends.len() + new > MAX_BACKENDS {
            return Err(CoreError::TooManyBackends);
        }
        let present: std::collections::HashMap<Box<str>, u32> =
            present.into_iter().map(|(k, i)| (k.into(), i)).collect();
        let mut done = Reconciliation::default();
        for (position, &(key, _)) in desired.iter().enumerate() {
            // A key listed twice is handled once, at its last listing, with the last weight.
            if desired[position + 1..].iter().any(|(k, _)| *k == key) {
                continue;
            }
            let weight = wanted[key];
            match present.get(key) {
                Some(&index) => {
                    let id = self.backends.id_of(index);
                    if self.backends.slots[index as usize].leaving {
                        self.update_index_state(index as usize, |slot| {
                            slot.leaving = false;
                            slot.draining = false;
                        });
                        done.restored.push(id);
                    }
                    if self.backends.slots[index as usize].weight != weight {
                        self.backends.set_weight(index, weight);
                        done.reweighted.push(id);
                    }
                }
                None => {
                    let id = self.insert_backend(now, weight)?;
                    if self.keys.len() <= id.index() {
                        self.keys.resize(id.index() + 1, None);
                    }
                    self.keys[id.index()] = Some(key.into());
                    done.added.push((key.into(), id));
                }
            }
        }
        for (key, &index) in &present {
            if wanted.contains_key(&**key) || self.backends.slots[index as usize].leaving {
                continue;
            }
            let id = self.backends.id_of(index);
            if self.backends.slots[index as usize].pending == 0 {
                self.take_out(id)?;
                done.removed.push(id);
            } else {
                self.update_index_state(index as usize, |slot| {
                    slot.leaving = true;
                    slot.draining = true;
                });
                done.leaving.push(id);
            }
        }
        // HashMap order is not the driver's: sort, so both drivers journal the same lists.
        done.leaving.sort();
        done.removed.sort();
        Ok(done)
    }

    /// The key [`Scheduler::reconcile`] knows the backend by, if it manages it.
    pub fn key_of(&self, id: BackendId) -> Option<&str> {
        self.backends.resolve(id)?;
        self.keys.get(id.index())?.as_deref()
    }

    /// Whether a request of `method` could be retried at all: a driver keeps its body in
    /// memory only then.
    pub fn may_retry(&self, method: MethodClass) -> bool {
        self.config.retry.is_some_and(|r| r.may_retry(method))
    }

    /// Whether a response with `status` may be retried: a driver that gets one reports the
    /// try as soon as the head arrives (before passing anything on), so that the core can
    /// answer with a retry.
    pub fn retries_status(&self, status: u16) -> bool {
        self.config.retry.is_some_and(|r| r.retries_status(status))
    }

    /// Work: a request arrives at `now`; the policy chooses a backend for its first try, or
    /// the request is rejected (and over).
    ///
    /// The RNG is the caller's, seeded by the caller, so that runs replay exactly. With a
    /// `record`, the core also says why (the candidates the policy weighed, the rule that
    /// decided, the backends it passed over): same path, same decision, same RNG draws.
    pub fn handle_work<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
        request: RequestInfo,
        record: Option<&mut DecisionRecord>,
    ) -> Decision {
        self.handle_timeout(now);
        if self.config.retry.is_some() {
            self.retry_budget.record_request(now);
        }
        let record = record.map(|r| {
            *r = DecisionRecord::empty(now, self.config.policy);
            r
        });
        let decision = self.dispatch(now, rng, record, Placement::New(request));
        self.note(|| JournalEntry::Work { decision });
        decision
    }

    /// The next try of a request whose try `after` failed and was answered with
    /// [`AfterTry::Retry`], once its backoff is over: the same policy over the backends that
    /// have not failed this request (never back to one that did), not counted as a new request
    /// by the retry budget. A reject ends the request.
    ///
    /// Misuse (`after` is not waiting for a retry, or its backoff is not over) is an error
    /// and changes nothing.
    pub fn handle_retry_work<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
        after: RequestId,
        record: Option<&mut DecisionRecord>,
    ) -> Result<Decision, CoreError> {
        let result = self.retry_work(now, rng, after, record);
        self.note(|| JournalEntry::RetryWork {
            after,
            decision: result.clone(),
        });
        result
    }

    fn retry_work<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
        after: RequestId,
        record: Option<&mut DecisionRecord>,
    ) -> Result<Decision, CoreError> {
        let live = self
            .live_request(after)
            .ok_or(CoreError::UnknownRequest(after))?;
        let Stage::Backoff { retry_at } = live.stage else {
            return Err(CoreError::UnknownRequest(after));
        };
        if now < retry_at {
            return Err(CoreError::RetryTooEarly {
                request: after,
                retry_at,
            });
        }
        self.handle_timeout(now);
        let tried = std::mem::take(&mut self.requests[after.slot as usize].entry_mut().tried);
        // Set aside even ineligible ones: panic mode may choose among ineligible backends,
        // and a retry must still never go back to one that failed it.
        let mut set_aside = Vec::with_capacity(tried.len());
        for &id in &tried {
            if let Some(index) = self.backends.resolve(id) {
                self.update_index_state(index, |slot| slot.excluded = true);
                set_aside.push(index);
            }
        }
        let record = record.map(|r| {
            *r = DecisionRecord::empty(now, self.config.policy);
            r.retry = true;
            r
        });
        let decision = self.dispatch(now, rng, record, Placement::Retry(after.slot));
        for index in set_aside {
            self.update_index_state(index, |slot| slot.excluded = false);
        }
        if let Some(live) = self.requests[after.slot as usize].entry.as_mut() {
            live.tried = tried;
        }
        Ok(decision)
    }

    /// Ends a request that was waiting for its retry (the client left during the backoff,
    /// or the driver is shutting down). Unknown requests are an error and change nothing.
    pub fn handle_abandon(&mut self, request: RequestId) -> Result<(), CoreError> {
        let result = match self.live_request(request).map(|l| l.stage) {
            Some(Stage::Backoff { .. }) => {
                self.waiting -= 1;
                self.free_slot(request.slot);
                Ok(())
            }
            _ => Err(CoreError::UnknownRequest(request)),
        };
        self.note(|| JournalEntry::Abandon {
            request,
            known: result.is_ok(),
        });
        result
    }

    /// Ends the ejections whose time is up and returns how many it ended. Work calls it; a
    /// driver calls it at [`Scheduler::next_timeout`] so that ejections end while no work
    /// arrives.
    pub fn handle_timeout(&mut self, now: Timestamp) -> u32 {
        let mut ended = 0;
        while let Some(&Reverse((until, index, generation))) = self.ejections.peek() {
            if until > now {
                break;
            }
            self.ejections.pop();
            let slot = &self.backends.slots[index as usize];
            if slot.live && slot.generation == generation && slot.ejected_until == Some(until) {
                self.ejected -= 1;
                ended += 1;
                self.update_index_state(index as usize, |slot| {
                    slot.ejected_until = None;
                    slot.returned_at = until;
                });
                self.start_warming(index as usize, until);
            }
        }
        if ended > 0 {
            self.note(|| JournalEntry::Timeout {
                ejections_ended: ended,
            });
        }
        ended
    }

    /// The earliest time at which [`Scheduler::handle_timeout`] has something to do: a
    /// driver sleeps until then (and again after any done that ejected a backend). Backoffs
    /// are not in it: the driver waits each one out for its request.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.ejections.peek().map(|Reverse((until, _, _))| *until)
    }

    #[inline]
    fn dispatch<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
        mut record: Option<&mut DecisionRecord>,
        placement: Placement,
    ) -> Decision {
        let (pick, panic) = if self.in_flight >= self.config.max_in_flight {
            (None, false)
        } else {
            let key = match placement {
                Placement::New(info) => info.hash_key,
                Placement::Retry(slot) => self.requests[slot as usize]
                    .entry
                    .as_ref()
                    .and_then(|live| live.info.hash_key),
            };
            self.choose(now, rng, key)
        };
        if let Some(record) = record.as_deref_mut() {
            record.panic = panic;
            self.describe(now, pick, record);
        }
        let Some(Pick { chosen: index, .. }) = pick else {
            let reason = if self.in_flight >= self.config.max_in_flight || self.full > 0 {
                RejectReason::Overloaded
            } else {
                RejectReason::NoBackend
            };
            if let Placement::Retry(slot) = placement {
                self.waiting -= 1;
                self.free_slot(slot);
            }
            let decision = Decision::Reject { reason };
            if let Some(record) = record {
                record.decision = decision;
            }
            return decision;
        };
        let slot = &mut self.backends.slots[index as usize];
        debug_assert!(
            slot.eligible() || (panic && slot.live && !slot.draining && !slot.full),
            "policy chose an ineligible backend"
        );
        let old = slot.pending;
        slot.pending += 1;
        slot.dispatched += 1;
        if slot.eligible() {
            self.policy.on_pending_changed(index, old, old + 1);
        }
        if let Some(cap) = self.config.max_pending_per_backend
            && old + 1 >= cap
        {
            self.full += 1;
            self.update_index_state(index as usize, |slot| slot.full = true);
        }
        let backend = self.backends.id_of(index);
        let stage = Stage::InFlight {
            backend,
            dispatched_at: now,
        };
        let request = match placement {
            Placement::New(info) => self.start_request(Live {
                stage,
                info,
                retries: 0,
                tried: Vec::new(),
            }),
            Placement::Retry(slot) => {
                self.waiting -= 1;
                self.resume_request(slot, stage)
            }
        };
        let decision = Decision::Dispatch { request, backend };
        if let Some(record) = record {
            record.decision = decision;
        }
        decision
    }

    /// The policy's choice, through panic mode and slow start. Returns it and whether the
    /// pool was in panic.
    #[inline]
    fn choose<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        rng: &mut R,
        key: Option<u64>,
    ) -> (Option<Pick>, bool) {
        let candidates = self.backends.len() - self.draining as usize;
        if warmup::in_panic(
            self.config.panic_threshold_percent,
            self.backends.eligible_len(),
            candidates,
        ) {
            return (self.panic_pick(rng), true);
        }
        let decay_ns = self.config.ewma_decay_ns as f64;
        let mut pick = self
            .policy
            .pick(&self.backends, now, decay_ns, rng, key, self.in_flight);
        let Some(slow_start) = self.config.slow_start.filter(|_| self.warming > 0) else {
            return (pick, false);
        };
        // A warming backend's turn stands with the probability of its ramp; otherwise the
        // policy chooses again without it. A few rounds at most: the fallback is the first.
        const REDRAWS: usize = 3;
        let mut set_aside = [0u32; REDRAWS];
        let mut aside = 0;
        while let Some(Pick { chosen, .. }) = pick {
            let slot = &self.backends.slots[chosen as usize];
            let Some(since) = slot.warming_since else {
                break;
            };
            let share = slow_start.ramp(since, now);
            if share >= 1.0 {
                self.warming -= 1;
                self.backends.slots[chosen as usize].warming_since = None;
                break;
            }
            if aside == REDRAWS || rng.random::<f64>() < share {
                break;
            }
            self.update_index_state(chosen as usize, |slot| slot.excluded = true);
            set_aside[aside] = chosen;
            aside += 1;
            pick = self
                .policy
                .pick(&self.backends, now, decay_ns, rng, key, self.in_flight);
        }
        for &index in &set_aside[..aside] {
            self.update_index_state(index as usize, |slot| slot.excluded = false);
        }
        if pick.is_none() && aside > 0 {
            // Only warming backends could take it: better the first of them than a 503.
            pick = Some(Pick {
                chosen: set_aside[0],
                rival: None,
                hash: None,
            });
        }
        (pick, false)
    }

    /// Panic mode: p2c by pending over every live backend that is not draining or full.
    /// Two passes over the slots and no allocation: O(backends) per request, acceptable for
    /// a pool that is mostly down.
    fn panic_pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<Pick> {
        let open = || {
            self.backends.live_indices().filter(|&i| {
                let slot = &self.backends.slots[i as usize];
                !slot.draining && !slot.full && !slot.excluded
            })
        };
        let count = open().count();
        let (a, b) = match count {
            0 => return None,
            1 => (0, None),
            n => {
                let a = rng.random_range(0..n);
                let b = rng.random_range(0..n - 1);
                (a, Some(if b >= a { b + 1 } else { b }))
            }
        };
        let first = open().nth(a)?;
        let second = b.and_then(|b| open().nth(b));
        let pending = |i: u32| self.backends.slots[i as usize].pending;
        Some(match second {
            Some(second) if pending(second) < pending(first) => Pick {
                chosen: second,
                rival: Some(first),
                hash: None,
            },
            _ => Pick {
                chosen: first,
                rival: second,
                hash: None,
            },
        })
    }

    fn start_warming(&mut self, index: usize, now: Timestamp) {
        if self.config.slow_start.is_none() {
            return;
        }
        let slot = &mut self.backends.slots[index];
        if slot.warming_since.is_none() {
            self.warming += 1;
        }
        slot.warming_since = Some(now);
    }

    /// Fills a record with the state the policy decided on, before the dispatch counts.
    fn describe(&self, now: Timestamp, pick: Option<Pick>, record: &mut DecisionRecord) {
        let decay_ns = self.config.ewma_decay_ns as f64;
        let candidate = |index: u32| {
            let slot = &self.backends.slots[index as usize];
            Candidate {
                backend: self.backends.id_of(index),
                pending: slot.pending,
                weight: slot.weight,
                ewma: slot.ewma,
                at: now,
                decay_ns,
            }
        };
        record.eligible = self.backends.eligible_len() as u32;
        record.backends = self.backends.len() as u32;
        if let Some(pick) = pick {
            record.chosen = Some(candidate(pick.chosen));
            record.rival = pick.rival.map(candidate);
            record.hash = pick.hash.map(|hash| crate::explain::HashDecision {
                key_hash: hash.key_hash,
                owner: self.backends.id_of(hash.owner),
                passed: hash.passed,
                cap: hash.cap,
            });
            let context = (!record.panic)
                .then(|| {
                    self.policy
                        .least_pending_context(pick.chosen, EXPLAIN_TIE_LIMIT)
                })
                .flatten();
            if let Some((next, ties)) = context {
                record.rival = next.map(candidate);
                record.ties = ties;
            }
        }
        if self.backends.slots.len() <= EXPLAIN_LIST_SKIPPED_UP_TO {
            let skipped = self.backends.live_indices().filter_map(|index| {
                let slot = &self.backends.slots[index as usize];
                let reason = if slot.draining {
                    SkipReason::Draining
                } else if !slot.up {
                    SkipReason::Down
                } else if let Some(until) = slot.ejected_until {
                    SkipReason::Ejected { until }
                } else if slot.full {
                    SkipReason::Full
                } else if slot.excluded {
                    SkipReason::AlreadyTried
                } else {
                    return None;
                };
                Some(Skipped {
                    backend: self.backends.id_of(index),
                    reason,
                })
            });
            for (place, skipped) in record
                .skipped
                .iter_mut()
                .zip(skipped.take(EXPLAIN_SKIPPED_NAMED))
            {
                *place = Some(skipped);
            }
        }
    }

    /// Done: the try dispatched as `request` ended at `now` as `report` says. The core counts
    /// it (a response whose status is in `failure_status` is a failure), may eject the backend,
    /// removes a leaving backend at its last done, and answers what the request does next:
    /// [`AfterTry::Finished`], or [`AfterTry::Retry`] after a backoff, with no backend held
    /// meanwhile. So a failed try's done and ejection always reach the core before the next
    /// backend is chosen.
    ///
    /// Misuse (an unknown or already finished try) returns an error and changes nothing.
    pub fn handle_done<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        request: RequestId,
        report: impl Into<TryReport>,
        rng: &mut R,
    ) -> Result<Completion, CoreError> {
        let report = report.into();
        let result = self.done(now, request, &report, rng);
        self.note(|| JournalEntry::Done {
            request,
            report,
            answer: result.clone().map(|c| DoneAnswer {
                outcome: c.outcome,
                ejected: c.ejected_until.is_some(),
                removed: c.removed,
                next: c.next,
            }),
        });
        result
    }

    fn done<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        request: RequestId,
        report: &TryReport,
        rng: &mut R,
    ) -> Result<Completion, CoreError> {
        let Some(Stage::InFlight {
            backend,
            dispatched_at,
        }) = self.live_request(request).map(|l| l.stage)
        else {
            return Err(CoreError::UnknownRequest(request));
        };
        self.in_flight -= 1;
        let Some(index) = self.backends.resolve(backend) else {
            self.orphaned -= 1;
            self.free_slot(request.slot);
            return Err(CoreError::BackendRemoved { request, backend });
        };
        let outcome = report.outcome(&self.config.failure_status);
        let latency = now.saturating_since(dispatched_at);
        let decay_ns = self.config.ewma_decay_ns as f64;
        let slot = &mut self.backends.slots[index];
        debug_assert!(
            slot.pending > 0,
            "a dispatched request's backend has pending > 0"
        );
        let old = slot.pending;
        slot.pending -= 1;
        match outcome {
            Outcome::Success => {
                slot.succeeded += 1;
                slot.consecutive_failures = 0;
            }
            Outcome::Failure(_) => {
                slot.failed += 1;
                slot.consecutive_failures += 1;
            }
            Outcome::Cancelled => {}
        }
        if outcome != Outcome::Cancelled {
            // From the timestamps, not the Duration: u128 → f64 showed in the sim's profile.
            let latency_ns = now.as_nanos().saturating_sub(dispatched_at.as_nanos());
            slot.ewma.observe(now, latency_ns as f64, decay_ns);
        }
        if slot.eligible() {
            self.policy.on_pending_changed(index as u32, old, old - 1);
        }
        if slot.full
            && self
                .config
                .max_pending_per_backend
                .is_none_or(|cap| old - 1 < cap)
        {
            self.full -= 1;
            self.update_index_state(index, |slot| slot.full = false);
        }
        let slot = &self.backends.slots[index];
        let (leaving, idle) = (slot.leaving, slot.pending == 0);
        let ejected_until = if leaving {
            None
        } else {
            self.maybe_eject(index, now)
        };
        let removed = leaving && idle;
        if removed {
            self.take_out(backend)?;
        }
        let next = self.after_try(now, request, backend, report, outcome, rng);
        Ok(Completion {
            request,
            backend,
            latency,
            outcome,
            ejected_until,
            removed,
            next,
        })
    }

    /// The retry decision for a try that just ended (its counts already taken), carried out
    /// on the request's slot: back to waiting for a retry, or freed.
    fn after_try<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        request: RequestId,
        backend: BackendId,
        report: &TryReport,
        outcome: Outcome,
        rng: &mut R,
    ) -> AfterTry {
        let retry_status =
            matches!(report.end, TryEnd::Response { status } if self.retries_status(status));
        let no_retry = if !(matches!(outcome, Outcome::Failure(_)) || retry_status) {
            None
        } else {
            let live = self.requests[request.slot as usize].entry_mut();
            let ended = EndedTry {
                retries_so_far: live.retries,
                method: live.info.method,
                report,
                deadline: live.info.deadline,
            };
            let decided = match &self.config.retry {
                Some(config) => retry::decide(config, &mut self.retry_budget, now, &ended, rng),
                None => Err(NoRetryReason::AttemptsExhausted),
            };
            match decided {
                Ok(backoff) => {
                    let live = self.requests[request.slot as usize].entry_mut();
                    live.retries += 1;
                    live.tried.push(backend);
                    live.stage = Stage::Backoff {
                        retry_at: now + backoff,
                    };
                    self.waiting += 1;
                    return AfterTry::Retry { backoff };
                }
                Err(reason) => Some(reason),
            }
        };
        self.free_slot(request.slot);
        AfterTry::Finished { no_retry }
    }

    /// Number of requests dispatched and not yet done (orphans included).
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Number of backends in the set.
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Number of backends that take new work.
    pub fn eligible_count(&self) -> usize {
        self.backends.eligible_len()
    }

    /// The backend's state and load as of `now`, if it is in the set.
    pub fn backend(&self, id: BackendId, now: Timestamp) -> Option<BackendSnapshot> {
        let index = self.backends.resolve(id)?;
        Some(
            self.backends
                .snapshot(index as u32, now, self.config.ewma_decay_ns as f64),
        )
    }

    /// Every backend's state and load as of `now`, in slot order.
    pub fn backends(&self, now: Timestamp) -> impl Iterator<Item = BackendSnapshot> + '_ {
        let decay_ns = self.config.ewma_decay_ns as f64;
        self.backends
            .live_indices()
            .map(move |index| self.backends.snapshot(index, now, decay_ns))
    }

    /// Checks every invariant listed on [`Scheduler`]; O(backends + requests), for tests,
    /// the simulator and debug builds.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.backends.check().map_err(InvariantViolation)?;
        self.policy
            .check(&self.backends)
            .map_err(InvariantViolation)?;
        let live_pending: u64 = self
            .backends
            .slots
            .iter()
            .filter(|s| s.live)
            .map(|s| u64::from(s.pending))
            .sum();
        if live_pending + u64::from(self.orphaned) != u64::from(self.in_flight) {
            return Err(InvariantViolation(format!(
                "pending sums to {live_pending} with {} orphaned, but {} requests are in flight",
                self.orphaned, self.in_flight
            )));
        }
        let mut per_backend = vec![0u32; self.backends.slots.len()];
        let mut entries = 0u32;
        let mut trying = 0u32;
        let mut orphans = 0u32;
        for live in self.requests.iter().filter_map(|slot| slot.entry.as_ref()) {
            entries += 1;
            let Stage::InFlight { backend, .. } = live.stage else {
                continue;
            };
            trying += 1;
            match self.backends.resolve(backend) {
                Some(index) => per_backend[index] += 1,
                None => orphans += 1,
            }
            if live.tried.contains(&backend) {
                return Err(InvariantViolation(format!(
                    "a retry of a request went back to {backend}, which had failed it"
                )));
            }
        }
        if trying != self.in_flight
            || orphans != self.orphaned
            || entries != self.in_flight + self.waiting
        {
            return Err(InvariantViolation(format!(
                "{entries} requests ({trying} trying, {orphans} orphaned) but counters say {} trying ({} orphaned) and {} waiting",
                self.in_flight, self.orphaned, self.waiting
            )));
        }
        for (index, slot) in self.backends.slots.iter().enumerate() {
            if slot.live && slot.pending != per_backend[index] {
                return Err(InvariantViolation(format!(
                    "backend {} has pending {} but {} requests in flight",
                    self.backends.id_of(index as u32),
                    slot.pending,
                    per_backend[index]
                )));
            }
        }
        let live = || self.backends.slots.iter().filter(|s| s.live);
        let full = live().filter(|s| s.full).count();
        let ejected = live().filter(|s| s.ejected_until.is_some()).count();
        if full != self.full as usize || ejected != self.ejected as usize {
            return Err(InvariantViolation(format!(
                "{full} full and {ejected} ejected backends, but counters say {} and {}",
                self.full, self.ejected
            )));
        }
        if let Some(cap) = self.config.max_pending_per_backend {
            for slot in live() {
                // Pending may exceed the cap only after a reload lowered it; the backend then
                // stays full until enough requests finish.
                if slot.full != (slot.pending >= cap) {
                    return Err(InvariantViolation(format!(
                        "a backend has {} pending with a cap of {cap} (full: {})",
                        slot.pending, slot.full
                    )));
                }
            }
        }
        for slot in live().filter(|s| s.ejected_until.is_some()) {
            let (until, generation) = (slot.ejected_until, slot.generation);
            let queued = self
                .ejections
                .iter()
                .any(|Reverse((t, _, g))| Some(*t) == until && *g == generation);
            if !queued {
                return Err(InvariantViolation(
                    "an ejected backend has no scheduled end of ejection".into(),
                ));
            }
        }
        if live().any(|s| s.leaving && !s.draining) {
            return Err(InvariantViolation(
                "a backend leaving the set is not draining".into(),
            ));
        }
        let draining = live().filter(|s| s.draining).count();
        let warming = live().filter(|s| s.warming_since.is_some()).count();
        if draining != self.draining as usize || warming != self.warming as usize {
            return Err(InvariantViolation(format!(
                "{draining} draining and {warming} warming backends, but counters say {} and {}",
                self.draining, self.warming
            )));
        }
        if live().any(|s| s.excluded) {
            return Err(InvariantViolation(
                "a backend is still set aside after a retry dispatch".into(),
            ));
        }
        if self.free_requests.len() + entries as usize != self.requests.len() {
            return Err(InvariantViolation(
                "request slots leak: free + used != allocated".into(),
            ));
        }
        Ok(())
    }

    fn resolve(&self, id: BackendId) -> Result<usize, CoreError> {
        self.backends
            .resolve(id)
            .ok_or(CoreError::UnknownBackend(id))
    }

    fn update_state(
        &mut self,
        id: BackendId,
        change: impl FnOnce(&mut crate::backend::Slot),
    ) -> Result<(), CoreError> {
        let index = self.resolve(id)?;
        self.update_index_state(index, change);
        Ok(())
    }

    /// Applies `change` to a live slot and moves it in or out of the policy's index to match.
    fn update_index_state(&mut self, index: usize, change: impl FnOnce(&mut crate::backend::Slot)) {
        let slot = &mut self.backends.slots[index];
        let was_eligible = slot.eligible();
        let was_draining = slot.draining;
        change(slot);
        match (was_draining, slot.draining) {
            (false, true) => self.draining += 1,
            (true, false) => self.draining -= 1,
            _ => {}
        }
        let pending = slot.pending;
        if self.backends.refresh_eligibility(index as u32) {
            if was_eligible {
                self.policy.on_ineligible(index as u32, pending);
            } else {
                self.policy.on_eligible(index as u32, pending);
            }
        }
    }

    /// Ejects the backend if outlier detection is on, its failure streak reached the
    /// threshold, and the pool's ejection cap allows. Returns the end of the ejection.
    fn maybe_eject(&mut self, index: usize, now: Timestamp) -> Option<Timestamp> {
        let config = self.config.outlier?;
        let slot = &self.backends.slots[index];
        if slot.consecutive_failures < config.consecutive_failures.max(1)
            || slot.ejected_until.is_some()
            || self.ejected as usize >= config.max_ejected(self.backends.len())
        {
            return None;
        }
        // Time back in rotation earns forgiveness: one ejection forgotten per base period.
        let base_ns = config.base_ejection.as_nanos().max(1);
        let forgiven = now.saturating_since(slot.returned_at).as_nanos() / base_ns;
        let times = slot
            .times_ejected
            .saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX))
            + 1;
        let until = now + config.ejection_time(times);
        let generation = slot.generation;
        self.ejected += 1;
        self.update_index_state(index, |slot| {
            slot.times_ejected = times;
            slot.consecutive_failures = 0;
            slot.ejected_until = Some(until);
        });
        self.ejections
            .push(Reverse((until, index as u32, generation)));
        Some(until)
    }

    fn start_request(&mut self, entry: Live) -> RequestId {
        self.in_flight += 1;
        let slot = match self.free_requests.pop() {
            Some(slot) => slot,
            None => {
                self.requests.push(RequestSlot {
                    seq: 0,
                    entry: None,
                });
                (self.requests.len() - 1) as u32
            }
        };
        let record = &mut self.requests[slot as usize];
        debug_assert!(record.entry.is_none(), "a free request slot is empty");
        record.entry = Some(entry);
        record.seq = self.dispatches;
        self.dispatches += 1;
        RequestId {
            seq: record.seq,
            slot,
        }
    }

    /// A waiting request's next try: same slot, a new dispatch number.
    fn resume_request(&mut self, slot: u32, stage: Stage) -> RequestId {
        self.in_flight += 1;
        let record = &mut self.requests[slot as usize];
        record.entry_mut().stage = stage;
        record.seq = self.dispatches;
        self.dispatches += 1;
        RequestId {
            seq: record.seq,
            slot,
        }
    }

    /// The request whose current try is `request`, if it is live.
    fn live_request(&self, request: RequestId) -> Option<&Live> {
        self.requests
            .get(request.slot as usize)
            .filter(|slot| slot.seq == request.seq)
            .and_then(|slot| slot.entry.as_ref())
    }

    fn free_slot(&mut self, slot: u32) {
        let record = &mut self.requests[slot as usize];
        debug_assert!(record.entry.is_some(), "only a live request is freed");
        record.entry = None;
        self.free_requests.push(slot);
    }
}

impl RequestSlot {
    fn entry_mut(&mut self) -> &mut Live {
        self.entry
            .as_mut()
            .expect("callers checked that the request is live")
    }
}

fn check_weight(weight: u32) -> Result<(), CoreError> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(CoreError::InvalidWeight(weight))
    }
}
