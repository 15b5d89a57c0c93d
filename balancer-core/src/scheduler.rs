//! The work/done protocol: a request arrives, a decision comes back, exactly one done follows.

use std::fmt;
use std::time::Duration;

use rand::Rng;

use crate::backend::{BackendId, BackendSnapshot, BackendTable, MAX_WEIGHT};
use crate::error::{CoreError, InvariantViolation};
use crate::load::PeakEwma;
use crate::policy::{Policy, PolicyKind};
use crate::time::Timestamp;

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
}

impl SchedulerConfig {
    /// The defaults for `policy`.
    pub fn new(policy: PolicyKind) -> Self {
        SchedulerConfig {
            policy,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            ewma_decay_ns: 100_000_000,
            ewma_initial_ns: 1_000_000,
        }
    }
}

/// Names one dispatched request until its done is reported.
///
/// The sequence number counts dispatches of this scheduler (unique for its life, and what
/// people read: `r41` is the 42nd dispatch); the slot finds the entry in O(1) without hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId {
    seq: u64,
    slot: u32,
}

impl RequestId {
    /// The dispatch sequence number: unique within one scheduler, e.g. for logs and trace hashes.
    pub fn as_u64(self) -> u64 {
        self.seq
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.seq)
    }
}

/// Why a request was not dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No backend is up, undrained and in the set.
    NoBackend,
    /// `max_in_flight` requests are already in flight.
    Overloaded,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::NoBackend => "no eligible backend",
            RejectReason::Overloaded => "too many requests in flight",
        })
    }
}

/// What the core decided for one request.
#[must_use = "a decision must be carried out: dispatch the request or reject it"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Send the request to `backend`; report its done with `request`.
    Dispatch {
        /// The id to report the done with.
        request: RequestId,
        /// Where to send it.
        backend: BackendId,
    },
    /// Do not send the request anywhere.
    Reject {
        /// Why.
        reason: RejectReason,
    },
}

/// How a failed request failed, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Could not connect to the backend.
    Connect,
    /// The connection was reset or closed before the response finished.
    Reset,
    /// The backend did not answer in time.
    Timeout,
    /// The backend answered with a server error (5xx).
    ServerError,
    /// The backend crashed while serving (simulated faults).
    Crashed,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The response was delivered.
    Success,
    /// The backend failed to serve it.
    Failure(FailureKind),
    /// The client went away first; says nothing about the backend's health or latency.
    Cancelled,
}

/// What the core learnt from a done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request that finished.
    pub request: RequestId,
    /// Where it ran.
    pub backend: BackendId,
    /// Dispatch to done, on the driver's clock.
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// What removing a backend left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Requests still in flight on it; their dones will return [`CoreError::BackendRemoved`].
    pub orphaned: u32,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    backend: BackendId,
    dispatched_at: Timestamp,
}

#[derive(Clone, Copy, Debug)]
struct RequestSlot {
    /// The sequence number of the request in the slot, or of the last one it held.
    seq: u64,
    entry: Option<InFlight>,
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
    /// In-flight requests whose backend was removed.
    orphaned: u32,
    /// Dispatches so far; the next request's sequence number.
    dispatches: u64,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            policy: Policy::new(config.policy),
            config,
            backends: BackendTable::default(),
            requests: Vec::new(),
            free_requests: Vec::new(),
            in_flight: 0,
            orphaned: 0,
            dispatches: 0,
        }
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The policy in force.
    pub fn policy(&self) -> PolicyKind {
        self.config.policy
    }

    /// Adds an up, undrained backend with `weight` and returns its id.
    pub fn add_backend(&mut self, now: Timestamp, weight: u32) -> Result<BackendId, CoreError> {
        check_weight(weight)?;
        let initial = PeakEwma::new(self.config.ewma_initial_ns as f64, now);
        let id = self
            .backends
            .insert(weight, initial)
            .ok_or(CoreError::TooManyBackends)?;
        self.policy.on_eligible(id.index, 0);
        Ok(id)
    }

    /// Removes a backend at once. Its in-flight requests become orphans: their dones return
    /// [`CoreError::BackendRemoved`]. Use [`Scheduler::drain`] first for a graceful removal.
    pub fn remove_backend(&mut self, id: BackendId) -> Result<Removal, CoreError> {
        let index = self.resolve(id)?;
        let pending = self.backends.slots[index].pending;
        if self.backends.slots[index].eligible() {
            self.policy.on_ineligible(id.index, pending);
        }
        self.backends.remove(id.index);
        self.orphaned += pending;
        Ok(Removal { orphaned: pending })
    }

    /// Stops sending new work to the backend; in-flight requests finish normally.
    pub fn drain(&mut self, id: BackendId) -> Result<(), CoreError> {
        self.update_state(id, |slot| slot.draining = true)
    }

    /// Undoes [`Scheduler::drain`].
    pub fn undrain(&mut self, id: BackendId) -> Result<(), CoreError> {
        self.update_state(id, |slot| slot.draining = false)
    }

    /// Marks the backend up (takes work) or down (takes none; in-flight requests finish).
    pub fn set_up(&mut self, id: BackendId, up: bool) -> Result<(), CoreError> {
        self.update_state(id, |slot| slot.up = up)
    }

    /// Changes the backend's weight.
    pub fn set_weight(&mut self, id: BackendId, weight: u32) -> Result<(), CoreError> {
        check_weight(weight)?;
        let index = self.resolve(id)?;
        self.backends.set_weight(index as u32, weight);
        Ok(())
    }

    /// Work: a request arrives at `now`; the policy chooses a backend or the request is rejected.
    ///
    /// The RNG is the caller's, seeded by the caller, so that runs replay exactly.
    pub fn handle_work<R: Rng + ?Sized>(&mut self, now: Timestamp, rng: &mut R) -> Decision {
        if self.in_flight >= self.config.max_in_flight {
            return Decision::Reject {
                reason: RejectReason::Overloaded,
            };
        }
        let decay_ns = self.config.ewma_decay_ns as f64;
        let Some(index) = self.policy.pick(&self.backends, now, decay_ns, rng) else {
            return Decision::Reject {
                reason: RejectReason::NoBackend,
            };
        };
        let slot = &mut self.backends.slots[index as usize];
        debug_assert!(slot.eligible(), "policy chose an ineligible backend");
        let old = slot.pending;
        slot.pending += 1;
        slot.dispatched += 1;
        self.policy.on_pending_changed(index, old, old + 1);
        let backend = self.backends.id_of(index);
        let request = self.start_request(InFlight {
            backend,
            dispatched_at: now,
        });
        Decision::Dispatch { request, backend }
    }

    /// Done: the request dispatched as `request` ended at `now` with `outcome`.
    ///
    /// Misuse (an unknown or already finished request) returns an error and changes nothing.
    pub fn handle_done(
        &mut self,
        now: Timestamp,
        request: RequestId,
        outcome: Outcome,
    ) -> Result<Completion, CoreError> {
        let entry = self
            .requests
            .get(request.slot as usize)
            .filter(|slot| slot.seq == request.seq)
            .and_then(|slot| slot.entry)
            .ok_or(CoreError::UnknownRequest(request))?;
        self.finish_request(request);
        let Some(index) = self.backends.resolve(entry.backend) else {
            self.orphaned -= 1;
            return Err(CoreError::BackendRemoved {
                request,
                backend: entry.backend,
            });
        };
        let latency = now.saturating_since(entry.dispatched_at);
        let decay_ns = self.config.ewma_decay_ns as f64;
        let slot = &mut self.backends.slots[index];
        debug_assert!(
            slot.pending > 0,
            "a dispatched request's backend has pending > 0"
        );
        let old = slot.pending;
        slot.pending -= 1;
        match outcome {
            Outcome::Success => slot.succeeded += 1,
            Outcome::Failure(_) => slot.failed += 1,
            Outcome::Cancelled => {}
        }
        if outcome != Outcome::Cancelled {
            slot.ewma.observe(now, latency.as_nanos() as f64, decay_ns);
        }
        if slot.eligible() {
            self.policy.on_pending_changed(index as u32, old, old - 1);
        }
        Ok(Completion {
            request,
            backend: entry.backend,
            latency,
            outcome,
        })
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
        let mut orphans = 0u32;
        for entry in self.requests.iter().filter_map(|slot| slot.entry) {
            entries += 1;
            match self.backends.resolve(entry.backend) {
                Some(index) => per_backend[index] += 1,
                None => orphans += 1,
            }
        }
        if entries != self.in_flight || orphans != self.orphaned {
            return Err(InvariantViolation(format!(
                "{entries} request entries ({orphans} orphaned) but counters say {} ({})",
                self.in_flight, self.orphaned
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
        let slot = &mut self.backends.slots[index];
        let was_eligible = slot.eligible();
        change(slot);
        let pending = slot.pending;
        if self.backends.refresh_eligibility(id.index) {
            if was_eligible {
                self.policy.on_ineligible(id.index, pending);
            } else {
                self.policy.on_eligible(id.index, pending);
            }
        }
        Ok(())
    }

    fn start_request(&mut self, entry: InFlight) -> RequestId {
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

    fn finish_request(&mut self, request: RequestId) {
        let record = &mut self.requests[request.slot as usize];
        record.entry = None;
        self.free_requests.push(request.slot);
        self.in_flight -= 1;
    }
}

fn check_weight(weight: u32) -> Result<(), CoreError> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(CoreError::InvalidWeight(weight))
    }
}
