//! The driver: runs the event loop, feeds arrivals, dones and faults into the real core, measures.

use balancer_core::{
    BackendId, CoreError, Decision, FailedTry, FailureKind, HealthCheckConfig, HealthTransition,
    Outcome, OutlierConfig, PolicyKind, RejectReason, RetryConfig, RetryDecision, Scheduler,
    SchedulerConfig, SlowStartConfig, Timestamp,
};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::arrivals::{ArrivalSpec, BURSTY_DEFAULT_PERIOD_SERVICES, OpenLoop, think_ns};
use crate::backends::{BackendSpec, MAX_SIM_BACKENDS, SimBackend};
use crate::events::{EventKind, EventQueue, FailingJob, Job, NO_CLIENT, NO_TRIED};
use crate::faults::{Fault, ScenarioError, Step, check_spec, compile};

/// Most requests in one run: 10¹¹ is days of CPU; keeps counters and time sums far from overflow.
pub const MAX_REQUESTS: u64 = 100_000_000_000;

/// Highest load accepted: beyond 4× capacity a run only measures the core's rejections.
pub const MAX_LOAD: f64 = 4.0;

/// Longest a run may be expected to last in virtual time: 10¹⁸ ns (≈ 32 years) keeps every
/// event time well inside `u64` nanoseconds (≈ 584 years), so no timestamp saturates.
pub const MAX_EXPECTED_HORIZON_NS: f64 = 1e18;

/// RNG streams: each is `ChaCha8Rng::seed_from_u64(seed)` moved to its own stream number, so
/// the streams are independent and adding a consumer to one never shifts the others.
pub mod streams {
    /// Open-loop arrival times (and bursty on/off periods).
    pub const ARRIVALS: u64 = 1;
    /// The RNG handed to the core's `handle_work` (p2c, random).
    pub const POLICY: u64 = 2;
    /// Randomised faults: which requests a flaky backend fails. Drawn only while a backend
    /// is flaky, so a scenario without `flaky` faults never touches it.
    pub const FAULTS: u64 = 3;
    /// Closed-loop think times.
    pub const CLIENTS: u64 = 4;
    /// Service times of sim backend `i` come from stream `SERVICE_BASE + i`.
    pub const SERVICE_BASE: u64 = 1 << 32;
}

/// The RNG of stream `stream` for `seed`.
pub fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// The core's optional features a run turns on; all off by default, as in
/// `SchedulerConfig::new`. The simulator exercises the same decisions the proxy gets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CoreOptions {
    /// Passive health: consecutive failures eject a backend for a while.
    pub outlier: Option<OutlierConfig>,
    /// Circuit breaking: most requests in flight on one backend.
    pub max_pending_per_backend: Option<u32>,
    /// Failed tries are retried on another backend when the core says so (after its backoff).
    pub retry: Option<RetryConfig>,
    /// Active health checks run by the simulator, fed to `handle_health_check`.
    pub health: Option<HealthProbes>,
    /// Slow start: backends that come back (or join) ramp up their share of traffic.
    pub slow_start: Option<SlowStartConfig>,
    /// Panic threshold (percent): below it the core spreads work over unhealthy backends too,
    /// so dispatches to backends marked down or ejected are then expected.
    pub panic_threshold_percent: Option<u8>,
}

/// Active health checks: every `interval_ns` each backend is probed; a probe passes unless
/// the backend is crashed or a black hole. `rise`/`fall` go to the core's `HealthCheckConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthProbes {
    /// Time between two probes of one backend.
    pub interval_ns: u64,
    /// Passing probes in a row that bring a down backend up.
    pub rise: u32,
    /// Failing probes in a row that take an up backend down.
    pub fall: u32,
}

/// Shortest probe interval: probes are events, and one per backend per 10 µs of virtual time
/// would outnumber requests by far.
pub const MIN_PROBE_INTERVAL_NS: u64 = 10_000;

/// Everything a run depends on. Same config ⇒ same [`RunStats`], bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The core's policy.
    pub policy: PolicyKind,
    /// The initial fleet, sim indices 0..n.
    pub fleet: Vec<BackendSpec>,
    /// Offered load ρ = arrival rate ÷ capacity of the initial fleet (open loop only).
    pub load: f64,
    /// Requests to submit; the run ends when all have ended (completed, failed or rejected).
    pub requests: u64,
    /// The seed of every RNG stream.
    pub seed: u64,
    /// The arrival process.
    pub arrivals: ArrivalSpec,
    /// The fault schedule.
    pub faults: Vec<Fault>,
    /// Call the core's `check_invariants()` after every event (O(backends + in flight) each).
    pub check_invariants: bool,
    /// The core's bound on requests in flight; also bounds the sum of backend queues.
    pub max_in_flight: u32,
    /// Keep a record of every request's end in [`RunStats::trace`] (tests; costs 40 B a request).
    pub record_trace: bool,
    /// Outlier ejection, per-backend cap, retries, active health checks.
    pub core: CoreOptions,
    /// Recorded traffic to replay instead of `arrivals` and the fleet's service distributions.
    pub replay: Option<Replayed>,
}

/// Traffic from a trace: arrival times and observed service times, shared (cheap to clone).
///
/// With it, arrivals come at `arrivals_ns` (sorted; `requests` must equal its length) and
/// backend `i` draws its service times uniformly from `service_ns[i % service_ns.len()]`
/// (its own stream, as always), divided by its speed. The fleet's `service` is then used only
/// for capacity (set it to the empirical mean).
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// Arrival times, non-decreasing.
    pub arrivals_ns: std::sync::Arc<[u64]>,
    /// Per backend (or one pooled entry), observed service times; none empty.
    pub service_ns: std::sync::Arc<[Vec<u64>]>,
}

/// One dispatch, recorded when [`SimConfig::record_trace`] is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchRecord {
    /// Number of the event during which it happened (1-based, as [`RunStats::events`] counts).
    pub event: u64,
    /// Virtual time.
    pub time_ns: u64,
    /// Sim backend index.
    pub backend: u32,
    /// A retry rather than a first try.
    pub retry: bool,
}

/// One ejection as the core's own snapshot (`Scheduler::backends(now)`) showed it, recorded
/// when [`SimConfig::record_trace`] is set: the first event after which the snapshot named a
/// new `ejected_until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EjectionRecord {
    /// Sim backend index.
    pub backend: u32,
    /// Event after which it was first seen ejected.
    pub event: u64,
    /// Virtual time of that event.
    pub from_ns: u64,
    /// The snapshot's `ejected_until`.
    pub until_ns: u64,
    /// Whether the snapshot also said `eligible == false` then.
    pub ineligible: bool,
}

impl SimConfig {
    /// `backends` identical backends, Poisson arrivals, no faults.
    pub fn new(policy: PolicyKind, backends: usize, spec: BackendSpec) -> Self {
        SimConfig {
            policy,
            fleet: vec![spec; backends],
            load: 0.9,
            requests: 100_000,
            seed: 1,
            arrivals: ArrivalSpec::Poisson,
            faults: Vec::new(),
            check_invariants: false,
            max_in_flight: balancer_core::DEFAULT_MAX_IN_FLIGHT,
            record_trace: false,
            core: CoreOptions::default(),
            replay: None,
        }
    }

    /// Checks every setting is in range and the fault schedule fits the fleet.
    pub fn validate(&self) -> Result<(), SimError> {
        let config = self;
        if config.fleet.is_empty() || config.fleet.len() > MAX_SIM_BACKENDS {
            return Err(SimError::Config(format!(
                "the initial fleet must have 1..={MAX_SIM_BACKENDS} backends, got {}",
                config.fleet.len()
            )));
        }
        for spec in &config.fleet {
            check_spec(spec).map_err(SimError::Config)?;
        }
        if let Some(r) = &config.replay {
            if r.arrivals_ns.len() as u64 != config.requests
                || r.arrivals_ns.windows(2).any(|w| w[0] > w[1])
            {
                return Err(SimError::Config(
                    "replay: requests must equal the number of arrivals, in time order".into(),
                ));
            }
            if r.service_ns.is_empty() || r.service_ns.iter().any(Vec::is_empty) {
                return Err(SimError::Config(
                    "replay: no observed service times to draw from".into(),
                ));
            }
        } else if !(config.load > 0.0 && config.load <= MAX_LOAD) {
            return Err(SimError::Config(format!(
                "load must be in (0, {MAX_LOAD}], got {}",
                config.load
            )));
        }
        if !(1..=MAX_REQUESTS).contains(&config.requests) {
            return Err(SimError::Config(format!(
                "requests must be in 1..={MAX_REQUESTS}"
            )));
        }
        let capacity = config.capacity_per_ns();
        let slowest_service_ns = config
            .fleet
            .iter()
            .map(|s| s.service.mean_ns() / s.speed)
            .fold(0.0, f64::max);
        let horizon_ns = match config.arrivals {
            _ if config.replay.is_some() => 0.0,
            ArrivalSpec::Closed { clients, think_ns } => {
                (think_ns as f64 + slowest_service_ns) * config.requests as f64 / f64::from(clients)
            }
            _ => config.requests as f64 / (config.load * capacity),
        };
        if horizon_ns.is_nan() || horizon_ns > MAX_EXPECTED_HORIZON_NS {
            return Err(SimError::Config(format!(
                "the run would last about {horizon_ns:.3e} ns of virtual time, beyond the {MAX_EXPECTED_HORIZON_NS:e} ns horizon; raise the load or shorten the service times"
            )));
        }
        if config.max_in_flight == 0 {
            return Err(SimError::Config("max_in_flight must be positive".into()));
        }
        if config.core.max_pending_per_backend == Some(0) {
            return Err(SimError::Config(
                "max_pending_per_backend must be positive".into(),
            ));
        }
        if let Some(h) = config.core.health {
            if h.interval_ns < MIN_PROBE_INTERVAL_NS || h.rise == 0 || h.fall == 0 {
                return Err(SimError::Config(format!(
                    "health checks need an interval of at least {MIN_PROBE_INTERVAL_NS} ns and rise, fall ≥ 1"
                )));
            }
        }
        if config.core.panic_threshold_percent.is_some_and(|p| p > 100) {
            return Err(SimError::Config(
                "panic_threshold_percent must be in 0..=100".into(),
            ));
        }
        if let Some(r) = config.core.retry {
            if !(0.0..=10.0).contains(&r.budget_ratio) || r.max_retries > 100 {
                return Err(SimError::Config(
                    "retry budget_ratio must be in 0..=10 and max_retries ≤ 100".into(),
                ));
            }
        }
        compile(&config.faults, config.fleet.len(), "<scenario>")?;
        Ok(())
    }

    /// Requests per nanosecond the initial fleet completes when all servers are busy.
    pub fn capacity_per_ns(&self) -> f64 {
        self.fleet.iter().map(BackendSpec::capacity_per_ns).sum()
    }
}

/// Why a run could not be done, or found a bug.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A setting out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The fault schedule does not fit the fleet.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The core refused a call the simulator believed valid: a bug in one of them.
    #[error("at t={time_ns}ns the core refused a call: {source}")]
    Core {
        /// Virtual time.
        time_ns: u64,
        /// The core's error.
        source: CoreError,
    },
    /// `check_invariants()` failed after an event: a bug in the core (or the driver).
    #[error("at t={time_ns}ns after event #{event}: {violation}")]
    Invariant {
        /// Virtual time.
        time_ns: u64,
        /// How many events had been handled.
        event: u64,
        /// What broke.
        violation: balancer_core::InvariantViolation,
    },
    /// A request ended too early, or work went to a backend marked down or draining.
    #[error("at t={time_ns}ns causality broken: {what}")]
    Causality {
        /// Virtual time.
        time_ns: u64,
        /// What happened.
        what: String,
    },
    /// No event was pending but requests were unfinished: a bug in the driver.
    #[error("at t={time_ns}ns the simulation stalled with {unfinished} requests unfinished")]
    Stalled {
        /// Virtual time.
        time_ns: u64,
        /// Requests submitted or not, not ended.
        unfinished: u64,
    },
}

/// What happened to one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendStats {
    /// Configured behaviour.
    pub spec: BackendSpec,
    /// Requests completed with success.
    pub served: u64,
    /// Tries that failed on it (a retried request may fail on several backends).
    pub failed: u64,
    /// Busy server-time ÷ (servers × time since it joined).
    pub utilization: f64,
    /// Longest its waiting queue was.
    pub max_queue: usize,
    /// Whether it was removed before the end.
    pub removed: bool,
}

/// What a run measured. Entirely a function of the [`SimConfig`].
#[derive(Clone, Debug)]
pub struct RunStats {
    /// Requests sent to the core.
    pub submitted: u64,
    /// Requests that ended with success.
    pub completed: u64,
    /// Requests that ended with a failure (crash, black hole, removed backend), after retries.
    pub failed: u64,
    /// Failed tries that were retried (each retry is preceded by one failed try).
    pub retries: u64,
    /// Requests the core rejected.
    pub rejected: u64,
    /// Sojourn (arrival → done) of successful requests, in ns.
    pub sojourn_ns: Histogram<u64>,
    /// Exact sum of those sojourns, for an exact mean.
    pub sojourn_sum_ns: u128,
    /// Virtual time of the last event, in ns.
    pub end_ns: u64,
    /// Per sim backend, in sim-index order.
    pub backends: Vec<BackendStats>,
    /// FNV-1a hash of every decision and done, in order.
    pub trace_hash: u64,
    /// Events handled.
    pub events: u64,
    /// Requests the core still counted in flight at the end (0 unless a request was lost).
    pub in_flight_at_end: u32,
    /// Every request's end, in order, if [`SimConfig::record_trace`] was set.
    pub trace: Vec<Ended>,
    /// Every dispatch, in order, if [`SimConfig::record_trace`] was set.
    pub dispatches: Vec<DispatchRecord>,
    /// Every ejection the core's snapshots showed, in order, if [`SimConfig::record_trace`] was set.
    pub ejections: Vec<EjectionRecord>,
    /// Every start of a slow-start ramp the core's snapshots showed (`warming_since`), as
    /// (sim backend index, since ns), in order, if [`SimConfig::record_trace`] was set.
    pub warmups: Vec<(u32, u64)>,
}

/// How a request ended, as recorded in [`RunStats::trace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// Served.
    Completed,
    /// Failed (crash, black hole, removed backend).
    Failed,
    /// Rejected by the core.
    Rejected,
}

/// One request's life, for checks from outside the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The core's id (ids are reused after the done, with a new generation).
    pub request: u64,
    /// Sim index of the backend, or `u32::MAX` if rejected.
    pub backend: u32,
    /// When it arrived.
    pub arrived_ns: u64,
    /// Service time it was given (0 unless it was served).
    pub service_ns: u64,
    /// When it ended.
    pub ended_ns: u64,
    /// How.
    pub kind: EndKind,
}

impl RunStats {
    /// Mean sojourn of successful requests in ns (0 if none).
    pub fn mean_sojourn_ns(&self) -> f64 {
        if self.completed == 0 {
            0.0
        } else {
            self.sojourn_sum_ns as f64 / self.completed as f64
        }
    }
}

/// A request between its arrival (or retry) and the core's decision.
#[derive(Clone, Copy, Debug)]
struct Pending {
    arrived_ns: u64,
    client: u32,
    retries: u32,
    tried: u32,
}

/// FNV-1a over little-endian words: fixed across platforms and Rust releases, unlike std's hasher.
#[derive(Clone, Copy, Debug)]
struct TraceHash(u64);

impl TraceHash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    #[inline]
    fn word(&mut self, word: u64) {
        for byte in word.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        }
    }
}

/// Runs one simulation to the end.
pub fn run(config: &SimConfig) -> Result<RunStats, SimError> {
    Sim::new(config)?.run()
}

struct Sim<'a> {
    config: &'a SimConfig,
    scheduler: Scheduler,
    backends: Vec<SimBackend>,
    /// Core slot index → sim index, for the backends currently in the core.
    by_slot: Vec<u32>,
    queue: EventQueue,
    steps: Vec<(u64, Step)>,
    policy_rng: ChaCha8Rng,
    arrival_rng: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    client_rng: ChaCha8Rng,
    open_loop: Option<OpenLoop>,
    think_ns: u64,
    global_spike: f64,
    now_ns: u64,
    submitted: u64,
    ended: u64,
    completed: u64,
    failed: u64,
    rejected: u64,
    sojourn: Histogram<u64>,
    sojourn_sum_ns: u128,
    trace: TraceHash,
    events: u64,
    ended_log: Vec<Ended>,
    dispatch_log: Vec<DispatchRecord>,
    ejection_log: Vec<EjectionRecord>,
    /// Per sim backend, the last `ejected_until` seen in the core's snapshot (record_trace only).
    seen_ejected_until: Vec<Option<u64>>,
    warmup_log: Vec<(u32, u64)>,
    /// Per sim backend, the last `warming_since` seen in the core's snapshot (record_trace only).
    seen_warming_since: Vec<Option<u64>>,
    /// Next replayed arrival to schedule.
    next_replayed: usize,
    /// Jobs waiting for their `Failed` event, and the free slots among them.
    failing: Vec<FailingJob>,
    free_failing: Vec<u32>,
    /// Jobs waiting for their `Retry` event, and the free slots among them.
    retrying: Vec<Job>,
    free_retrying: Vec<u32>,
    /// Per retried job: the backends it failed on (handed to `handle_retry_work` to exclude).
    tried: Vec<Vec<BackendId>>,
    free_tried: Vec<u32>,
    retries: u64,
}

impl<'a> Sim<'a> {
    fn new(config: &'a SimConfig) -> Result<Self, SimError> {
        config.validate()?;
        let steps = compile(&config.faults, config.fleet.len(), "<scenario>")?;
        let mut core_config = SchedulerConfig::new(config.policy);
        core_config.max_in_flight = config.max_in_flight;
        core_config.outlier = config.core.outlier;
        core_config.max_pending_per_backend = config.core.max_pending_per_backend;
        core_config.retry = config.core.retry;
        core_config.slow_start = config.core.slow_start;
        core_config.panic_threshold_percent = config.core.panic_threshold_percent;
        if let Some(h) = config.core.health {
            core_config.health_check = HealthCheckConfig {
                rise: h.rise,
                fall: h.fall,
            };
        }
        let mut sim = Sim {
            config,
            scheduler: Scheduler::new(core_config),
            backends: Vec::with_capacity(config.fleet.len()),
            by_slot: Vec::new(),
            queue: EventQueue::with_capacity(config.fleet.len() * 2 + steps.len() + 16),
            steps,
            policy_rng: stream_rng(config.seed, streams::POLICY),
            arrival_rng: stream_rng(config.seed, streams::ARRIVALS),
            fault_rng: stream_rng(config.seed, streams::FAULTS),
            client_rng: stream_rng(config.seed, streams::CLIENTS),
            open_loop: None,
            think_ns: 0,
            global_spike: 1.0,
            now_ns: 0,
            submitted: 0,
            ended: 0,
            completed: 0,
            failed: 0,
            rejected: 0,
            // 1 ns .. 2 days at 3 significant digits: 0.1% resolution, ~600 KB.
            sojourn: Histogram::new_with_bounds(1, 2 * crate::distribution::MAX_DURATION_NS, 3)
                .map_err(|e| SimError::Config(e.to_string()))?,
            sojourn_sum_ns: 0,
            trace: TraceHash(TraceHash::OFFSET),
            events: 0,
            ended_log: Vec::new(),
            dispatch_log: Vec::new(),
            ejection_log: Vec::new(),
            seen_ejected_until: Vec::new(),
            warmup_log: Vec::new(),
            seen_warming_since: Vec::new(),
            next_replayed: 0,
            failing: Vec::new(),
            free_failing: Vec::new(),
            retrying: Vec::new(),
            free_retrying: Vec::new(),
            tried: Vec::new(),
            free_tried: Vec::new(),
            retries: 0,
        };
        for spec in &config.fleet {
            sim.add_backend(*spec)?;
        }
        if let Some(h) = config.core.health {
            // Staggered over one interval, as independent checkers would be.
            let n = config.fleet.len() as u64;
            for backend in 0..n {
                let at = h.interval_ns + h.interval_ns * backend / n;
                sim.queue.push(
                    at,
                    EventKind::Probe {
                        backend: backend as u32,
                    },
                );
            }
        }
        for index in 0..sim.steps.len() {
            let at = sim.steps[index].0;
            sim.queue.push(
                at,
                EventKind::Fault {
                    index: index as u32,
                },
            );
        }
        let rate_per_ns = config.load * config.capacity_per_ns();
        let mean_service_ns = config
            .fleet
            .iter()
            .map(|s| s.service.mean_ns())
            .sum::<f64>()
            / config.fleet.len() as f64;
        match config.arrivals {
            _ if config.replay.is_some() => {}
            ArrivalSpec::Poisson => {
                sim.open_loop = Some(OpenLoop::new(rate_per_ns, None, &mut sim.arrival_rng));
            }
            ArrivalSpec::Bursty { on_ns, off_ns } => {
                let default = (mean_service_ns * BURSTY_DEFAULT_PERIOD_SERVICES).round() as u64;
                let periods = if on_ns == 0 {
                    (default, default)
                } else {
                    (on_ns, off_ns)
                };
                sim.open_loop = Some(OpenLoop::new(
                    rate_per_ns,
                    Some(periods),
                    &mut sim.arrival_rng,
                ));
            }
            ArrivalSpec::Closed { clients, think_ns } => {
                sim.think_ns = think_ns;
                for client in 0..clients {
                    let at = crate::arrivals::think_ns(think_ns, &mut sim.client_rng);
                    sim.queue.push(at, EventKind::ClientWakes { client });
                }
            }
        }
        if let Some(open) = sim.open_loop.as_mut() {
            let at = open.next_ns(&mut sim.arrival_rng);
            sim.queue.push(at, EventKind::Arrival);
        }
        sim.schedule_replayed();
        Ok(sim)
    }

    fn run(mut self) -> Result<RunStats, SimError> {
        while self.ended < self.config.requests {
            let Some(event) = self.queue.pop() else {
                return Err(SimError::Stalled {
                    time_ns: self.now_ns,
                    unfinished: self.config.requests - self.ended,
                });
            };
            self.now_ns = event.time_ns;
            self.events += 1;
            match event.kind {
                EventKind::Arrival => {
                    self.submit(NO_CLIENT)?;
                    if self.submitted < self.config.requests {
                        if let Some(open) = self.open_loop.as_mut() {
                            let at = open.next_ns(&mut self.arrival_rng).max(self.now_ns);
                            self.queue.push(at, EventKind::Arrival);
                        }
                        self.schedule_replayed();
                    }
                }
                EventKind::ClientWakes { client } => {
                    if self.submitted < self.config.requests {
                        self.submit(client)?;
                    }
                }
                EventKind::ServiceDone {
                    backend,
                    server,
                    epoch,
                } => self.service_done(backend, server, epoch)?,
                EventKind::Failed { slot } => {
                    let FailingJob { job, backend, kind } = self.failing[slot as usize];
                    self.free_failing.push(slot);
                    self.finish(job, backend, Outcome::Failure(kind))?;
                }
                EventKind::Retry { slot } => {
                    let job = self.retrying[slot as usize];
                    self.free_retrying.push(slot);
                    self.retry(job)?;
                }
                EventKind::Probe { backend } => self.probe(backend)?,
                EventKind::Fault { index } => {
                    let step = self.steps[index as usize].1;
                    self.apply(step)?;
                }
            }
            if self.config.record_trace {
                self.watch_ejections();
            }
            if self.config.check_invariants {
                self.scheduler
                    .check_invariants()
                    .map_err(|violation| SimError::Invariant {
                        time_ns: self.now_ns,
                        event: self.events,
                        violation,
                    })?;
            }
        }
        let end_ns = self.now_ns;
        let backends = self
            .backends
            .iter()
            .map(|b| {
                let lifetime = end_ns.saturating_sub(b.added_ns).max(1) as f64;
                BackendStats {
                    spec: b.spec,
                    served: b.served,
                    failed: b.failed,
                    utilization: b.busy_ns as f64 / (lifetime * f64::from(b.spec.concurrency)),
                    max_queue: b.max_queue,
                    removed: b.removed,
                }
            })
            .collect();
        Ok(RunStats {
            submitted: self.submitted,
            completed: self.completed,
            failed: self.failed,
            retries: self.retries,
            rejected: self.rejected,
            sojourn_ns: self.sojourn,
            sojourn_sum_ns: self.sojourn_sum_ns,
            end_ns,
            backends,
            trace_hash: self.trace.0,
            events: self.events,
            in_flight_at_end: self.scheduler.in_flight(),
            trace: self.ended_log,
            dispatches: self.dispatch_log,
            ejections: self.ejection_log,
            warmups: self.warmup_log,
        })
    }

    /// Schedules the next recorded arrival, if replaying.
    fn schedule_replayed(&mut self) {
        if let Some(r) = &self.config.replay {
            if let Some(&at) = r.arrivals_ns.get(self.next_replayed) {
                self.next_replayed += 1;
                self.queue.push(at.max(self.now_ns), EventKind::Arrival);
            }
        }
    }

    /// Records ejections and slow-start ramps as the core's own snapshots show them (tests;
    /// O(backends) per event).
    fn watch_ejections(&mut self) {
        let now = Timestamp::from_nanos(self.now_ns);
        for snapshot in self.scheduler.backends(now) {
            let index = self.by_slot[snapshot.id.index()] as usize;
            if self.seen_ejected_until.len() <= index {
                self.seen_ejected_until.resize(index + 1, None);
                self.seen_warming_since.resize(index + 1, None);
            }
            let since = snapshot.warming_since.map(Timestamp::as_nanos);
            if since != self.seen_warming_since[index] {
                self.seen_warming_since[index] = since;
                if let Some(since_ns) = since {
                    self.warmup_log.push((index as u32, since_ns));
                }
            }
            let until = snapshot.ejected_until.map(Timestamp::as_nanos);
            if until != self.seen_ejected_until[index] {
                self.seen_ejected_until[index] = until;
                if let Some(until_ns) = until {
                    self.ejection_log.push(EjectionRecord {
                        backend: index as u32,
                        event: self.events,
                        from_ns: self.now_ns,
                        until_ns,
                        ineligible: !snapshot.eligible,
                    });
                }
            }
        }
    }

    fn core_error(&self, source: CoreError) -> SimError {
        SimError::Core {
            time_ns: self.now_ns,
            source,
        }
    }

    fn add_backend(&mut self, spec: BackendSpec) -> Result<(), SimError> {
        let now = Timestamp::from_nanos(self.now_ns);
        let id = self
            .scheduler
            .add_backend(now, spec.weight)
            .map_err(|e| self.core_error(e))?;
        let sim_index = self.backends.len();
        let rng = stream_rng(self.config.seed, streams::SERVICE_BASE + sim_index as u64);
        self.backends
            .push(SimBackend::new(spec, id, rng, self.now_ns));
        if id.index() >= self.by_slot.len() {
            self.by_slot.resize(id.index() + 1, u32::MAX);
        }
        self.by_slot[id.index()] = sim_index as u32;
        if let (Some(h), true) = (
            self.config.core.health,
            sim_index >= self.config.fleet.len(),
        ) {
            self.queue.push(
                self.now_ns.saturating_add(h.interval_ns),
                EventKind::Probe {
                    backend: sim_index as u32,
                },
            );
        }
        Ok(())
    }

    /// A request arrives: ask the core, then carry out the decision.
    #[inline]
    fn submit(&mut self, client: u32) -> Result<(), SimError> {
        self.submitted += 1;
        let now = Timestamp::from_nanos(self.now_ns);
        let decision = self.scheduler.handle_work(now, &mut self.policy_rng);
        let request = Pending {
            arrived_ns: self.now_ns,
            client,
            retries: 0,
            tried: NO_TRIED,
        };
        self.carry_out(decision, request)
    }

    /// A retry is due: ask the core for another backend than those the job failed on.
    fn retry(&mut self, job: Job) -> Result<(), SimError> {
        let now = Timestamp::from_nanos(self.now_ns);
        let exclude = self
            .tried
            .get(job.tried as usize)
            .map_or(&[][..], Vec::as_slice);
        let decision = self
            .scheduler
            .handle_retry_work(now, &mut self.policy_rng, exclude);
        if let Decision::Dispatch { backend, .. } = decision {
            if exclude.contains(&backend) {
                return Err(SimError::Causality {
                    time_ns: self.now_ns,
                    what: format!("a retry went back to {backend}, where the request had failed"),
                });
            }
        }
        let request = Pending {
            arrived_ns: job.arrived_ns,
            client: job.client,
            retries: job.retries,
            tried: job.tried,
        };
        self.carry_out(decision, request)
    }

    #[inline]
    fn carry_out(&mut self, decision: Decision, job: Pending) -> Result<(), SimError> {
        let now = Timestamp::from_nanos(self.now_ns);
        self.trace.word(self.now_ns);
        match decision {
            Decision::Dispatch { request, backend } => {
                self.trace.word(request.as_u64());
                self.trace
                    .word((u64::from(backend.generation()) << 32) | backend.index() as u64);
                if self.config.check_invariants {
                    // The core's own view, apart from the driver's flags checked in dispatch.
                    let snapshot = self.scheduler.backend(backend, now);
                    let state = snapshot.map(|b| b.state);
                    let ejected = snapshot
                        .and_then(|b| b.ejected_until)
                        .is_some_and(|t| t > now);
                    // In panic mode the core may pick down or ejected backends, never draining ones.
                    let panic = self.config.core.panic_threshold_percent.is_some();
                    let allowed = match state {
                        Some(balancer_core::BackendState::Up) => !ejected || panic,
                        Some(balancer_core::BackendState::Down) => panic,
                        _ => false,
                    };
                    if !allowed {
                        return Err(SimError::Causality {
                            time_ns: self.now_ns,
                            what: format!(
                                "the core dispatched to {backend} in state {state:?} (ejected: {ejected})"
                            ),
                        });
                    }
                }
                let index = self.by_slot[backend.index()];
                if self.config.record_trace {
                    self.dispatch_log.push(DispatchRecord {
                        event: self.events,
                        time_ns: self.now_ns,
                        backend: index,
                        retry: job.retries > 0,
                    });
                }
                let job = Job {
                    request,
                    arrived_ns: job.arrived_ns,
                    service_ns: 0,
                    client: job.client,
                    retries: job.retries,
                    tried: job.tried,
                };
                self.dispatch(index, job)
            }
            Decision::Reject { reason } => {
                self.trace.word(match reason {
                    RejectReason::NoBackend => u64::MAX,
                    RejectReason::Overloaded => u64::MAX - 1,
                });
                self.rejected += 1;
                self.ended += 1;
                if self.config.record_trace {
                    self.ended_log.push(Ended {
                        request: u64::MAX,
                        backend: u32::MAX,
                        arrived_ns: job.arrived_ns,
                        service_ns: 0,
                        ended_ns: self.now_ns,
                        kind: EndKind::Rejected,
                    });
                }
                self.release_tried(job.tried);
                self.client_done(job.client);
                Ok(())
            }
        }
    }

    fn release_tried(&mut self, slot: u32) {
        if slot != NO_TRIED {
            self.tried[slot as usize].clear();
            self.free_tried.push(slot);
        }
    }

    /// The simulated health checker probes one backend and reports to the core.
    fn probe(&mut self, index: u32) -> Result<(), SimError> {
        let Some(h) = self.config.core.health else {
            return Ok(());
        };
        let b = &self.backends[index as usize];
        if b.removed {
            return Ok(()); // no more probes for it
        }
        let passed = !b.crashed && !b.black_hole;
        let id = b.core_id;
        let transition = self
            .scheduler
            .handle_health_check(Timestamp::from_nanos(self.now_ns), id, passed)
            .map_err(|e| self.core_error(e))?;
        match transition {
            Some(HealthTransition::WentDown) => self.backends[index as usize].marked_down = true,
            Some(HealthTransition::WentUp) => self.backends[index as usize].marked_down = false,
            None => {}
        }
        self.queue.push(
            self.now_ns.saturating_add(h.interval_ns),
            EventKind::Probe { backend: index },
        );
        Ok(())
    }

    #[inline]
    fn dispatch(&mut self, index: u32, mut job: Job) -> Result<(), SimError> {
        let now_ns = self.now_ns;
        let panic = self.config.core.panic_threshold_percent.is_some();
        let b = &mut self.backends[index as usize];
        if (b.marked_down && !panic) || b.draining || b.removed {
            return Err(SimError::Causality {
                time_ns: now_ns,
                what: format!(
                    "request {} dispatched to backend {index}, which is {}",
                    job.request,
                    if b.removed {
                        "removed"
                    } else if b.draining {
                        "draining"
                    } else {
                        "marked down"
                    }
                ),
            });
        }
        let flaky_fails = b.error_rate > 0.0 && self.fault_rng.random::<f64>() < b.error_rate;
        if b.crashed || b.black_hole || flaky_fails {
            let kind = if b.crashed {
                FailureKind::Connect
            } else {
                FailureKind::ServerError
            };
            let failing = FailingJob {
                job,
                backend: index,
                kind,
            };
            let slot = match self.free_failing.pop() {
                Some(slot) => {
                    self.failing[slot as usize] = failing;
                    slot
                }
                None => {
                    self.failing.push(failing);
                    (self.failing.len() - 1) as u32
                }
            };
            self.queue.push(now_ns, EventKind::Failed { slot });
            return Ok(());
        }
        job.service_ns = match &self.config.replay {
            None => b.spec.service.sample_ns(&mut b.rng),
            Some(r) => {
                let samples = &r.service_ns[index as usize % r.service_ns.len()];
                samples[b.rng.random_range(0..samples.len())]
            }
        };
        match b.idle.pop() {
            Some(server) => self.start(index, server, job),
            None => {
                b.queue.push_back(job);
                b.max_queue = b.max_queue.max(b.queue.len());
            }
        }
        Ok(())
    }

    /// Puts `job` on an idle server of backend `index`.
    #[inline]
    fn start(&mut self, index: u32, server: u32, mut job: Job) {
        let b = &mut self.backends[index as usize];
        job.service_ns = b.effective_service_ns(job.service_ns, self.global_spike);
        b.servers[server as usize] = Some(job);
        b.started_ns[server as usize] = self.now_ns;
        let epoch = b.epoch;
        self.queue.push(
            self.now_ns.saturating_add(job.service_ns),
            EventKind::ServiceDone {
                backend: index,
                server,
                epoch,
            },
        );
    }

    #[inline]
    fn service_done(&mut self, index: u32, server: u32, epoch: u32) -> Result<(), SimError> {
        let b = &mut self.backends[index as usize];
        if b.epoch != epoch {
            return Ok(()); // voided by a crash
        }
        let Some(job) = b.servers[server as usize].take() else {
            return Ok(());
        };
        b.busy_ns = b
            .busy_ns
            .saturating_add(self.now_ns - b.started_ns[server as usize]);
        match b.queue.pop_front() {
            Some(next) => self.start(index, server, next),
            None => b.idle.push(server),
        }
        if self.now_ns < job.arrived_ns.saturating_add(job.service_ns) {
            return Err(SimError::Causality {
                time_ns: self.now_ns,
                what: format!(
                    "request {} arrived at {}ns with service {}ns but completed at {}ns",
                    job.request, job.arrived_ns, job.service_ns, self.now_ns
                ),
            });
        }
        self.finish(job, index, Outcome::Success)
    }

    /// Reports the done to the core, retries the request if the core says so, else counts it.
    #[inline]
    fn finish(&mut self, mut job: Job, index: u32, outcome: Outcome) -> Result<(), SimError> {
        let now = Timestamp::from_nanos(self.now_ns);
        self.trace
            .word(self.now_ns ^ job.request.as_u64().rotate_left(17));
        let result = self.scheduler.handle_done(now, job.request, outcome);
        let b = &mut self.backends[index as usize];
        let completed = match result {
            Ok(_) => outcome == Outcome::Success,
            // Served, but by a backend removed meanwhile: counted as failed, never retried.
            Err(CoreError::BackendRemoved { .. }) => false,
            Err(e) => return Err(self.core_error(e)),
        };
        if completed {
            b.served += 1;
        } else {
            b.failed += 1;
            if let (Ok(_), Outcome::Failure(failure), Some(_)) =
                (&result, outcome, self.config.core.retry)
            {
                let failed = FailedTry {
                    retries_so_far: job.retries,
                    idempotent: true,
                    failure,
                    // Black holes and flaky backends answer 503 Service Unavailable.
                    status_503: failure == FailureKind::ServerError,
                    response_started: false,
                    body_consumed: false,
                };
                let core_id = b.core_id;
                if let RetryDecision::Retry { backoff } =
                    self.scheduler
                        .decide_retry(now, &failed, &mut self.policy_rng)
                {
                    self.retries += 1;
                    self.trace.word(u64::MAX - 2);
                    if job.tried == NO_TRIED {
                        job.tried = match self.free_tried.pop() {
                            Some(slot) => slot,
                            None => {
                                self.tried.push(Vec::new());
                                (self.tried.len() - 1) as u32
                            }
                        };
                    }
                    self.tried[job.tried as usize].push(core_id);
                    job.retries += 1;
                    let slot = match self.free_retrying.pop() {
                        Some(slot) => {
                            self.retrying[slot as usize] = job;
                            slot
                        }
                        None => {
                            self.retrying.push(job);
                            (self.retrying.len() - 1) as u32
                        }
                    };
                    let at = (now + backoff).as_nanos();
                    self.queue.push(at, EventKind::Retry { slot });
                    return Ok(());
                }
            }
        }
        self.ended += 1;
        if self.config.record_trace {
            self.ended_log.push(Ended {
                request: job.request.as_u64(),
                backend: index,
                arrived_ns: job.arrived_ns,
                service_ns: if completed { job.service_ns } else { 0 },
                ended_ns: self.now_ns,
                kind: if completed {
                    EndKind::Completed
                } else {
                    EndKind::Failed
                },
            });
        }
        if completed {
            self.completed += 1;
            let sojourn = self.now_ns - job.arrived_ns;
            self.sojourn_sum_ns += u128::from(sojourn);
            self.sojourn.saturating_record(sojourn.max(1));
        } else {
            self.failed += 1;
        }
        self.release_tried(job.tried);
        self.client_done(job.client);
        Ok(())
    }

    fn client_done(&mut self, client: u32) {
        if client != NO_CLIENT {
            let at = self
                .now_ns
                .saturating_add(think_ns(self.think_ns, &mut self.client_rng));
            self.queue.push(at, EventKind::ClientWakes { client });
        }
    }

    fn apply(&mut self, step: Step) -> Result<(), SimError> {
        if let Some(b) = step_backend(&step) {
            if self.backends[b as usize].removed {
                return Ok(()); // an end-of-window step after a removal: nothing left to change
            }
        }
        let now_ns = self.now_ns;
        match step {
            Step::Crash(b) => {
                let backend = &mut self.backends[b as usize];
                backend.crashed = true;
                backend.epoch = backend.epoch.wrapping_add(1);
                let mut lost = Vec::with_capacity(backend.in_system());
                for server in 0..backend.servers.len() {
                    if let Some(job) = backend.servers[server].take() {
                        backend.busy_ns = backend
                            .busy_ns
                            .saturating_add(now_ns - backend.started_ns[server]);
                        lost.push(job);
                    }
                }
                lost.extend(backend.queue.drain(..));
                backend.idle = (0..backend.spec.concurrency).rev().collect();
                for job in lost {
                    self.finish(job, b, Outcome::Failure(FailureKind::Crashed))?;
                }
            }
            Step::Detect(b) => {
                if self.backends[b as usize].crashed {
                    self.set_up(b, false)?;
                }
            }
            Step::Recover(b) => {
                self.backends[b as usize].crashed = false;
                // With active health checks the probes bring it back (after `rise` passes,
                // and then through slow start), as in the proxy; without them the schedule
                // stands for an operator who marks it up at once.
                if self.config.core.health.is_none() {
                    self.set_up(b, true)?;
                }
            }
            Step::BlackHole(b, on) => self.backends[b as usize].black_hole = on,
            Step::Flaky(b, rate) => self.backends[b as usize].error_rate = rate,
            Step::Spike(None, factor) => self.global_spike = factor,
            Step::Spike(Some(b), factor) => self.backends[b as usize].spike = factor,
            Step::Speed(b, speed) => {
                let backend = &mut self.backends[b as usize];
                backend.speed = speed.unwrap_or(backend.spec.speed);
            }
            Step::Add(spec) => self.add_backend(spec)?,
            Step::Remove(b) => {
                let id = self.backends[b as usize].core_id;
                let _removal = self
                    .scheduler
                    .remove_backend(id)
                    .map_err(|e| self.core_error(e))?;
                self.backends[b as usize].removed = true;
            }
            Step::Drain(b, on) => {
                let id = self.backends[b as usize].core_id;
                let result = if on {
                    self.scheduler.drain(id)
                } else {
                    self.scheduler.undrain(id)
                };
                result.map_err(|e| self.core_error(e))?;
                self.backends[b as usize].draining = on;
            }
            Step::Weight(b, weight) => {
                let id = self.backends[b as usize].core_id;
                self.scheduler
                    .set_weight(id, weight)
                    .map_err(|e| self.core_error(e))?;
            }
        }
        Ok(())
    }

    fn set_up(&mut self, b: u32, up: bool) -> Result<(), SimError> {
        let id = self.backends[b as usize].core_id;
        self.scheduler
            .set_up(id, up)
            .map_err(|e| self.core_error(e))?;
        self.backends[b as usize].marked_down = !up;
        Ok(())
    }
}

fn step_backend(step: &Step) -> Option<u32> {
    match *step {
        Step::Crash(b)
        | Step::Detect(b)
        | Step::Recover(b)
        | Step::BlackHole(b, _)
        | Step::Flaky(b, _)
        | Step::Spike(Some(b), _)
        | Step::Speed(b, _)
        | Step::Remove(b)
        | Step::Drain(b, _)
        | Step::Weight(b, _) => Some(b),
        Step::Spike(None, _) | Step::Add(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribution::ServiceDist;

    /// Golden values: a seed must give the same draws on every machine and after every
    /// upgrade of rand, rand_chacha or rand_distr. If this fails, runs no longer replay:
    /// say so in the changelog, then update the values.
    #[test]
    fn streams_are_stable_across_machines_and_upgrades() {
        let mut arrivals = stream_rng(1, streams::ARRIVALS);
        let words: Vec<u64> = (0..3).map(|_| arrivals.random::<u64>()).collect();
        let mut service = stream_rng(1, streams::SERVICE_BASE);
        let exp = ServiceDist::Exponential { mean_ns: 1e6 };
        let samples: Vec<u64> = (0..3).map(|_| exp.sample_ns(&mut service)).collect();
        assert_eq!(words, GOLDEN_WORDS, "arrival stream words");
        assert_eq!(samples, GOLDEN_EXP_NS, "exp:1ms samples of backend 0");
        // Streams differ from each other.
        let mut policy = stream_rng(1, streams::POLICY);
        assert_ne!(policy.random::<u64>(), GOLDEN_WORDS[0]);
    }

    const GOLDEN_WORDS: [u64; 3] = [
        15715005604373573095,
        939185832570518534,
        10307165283572921510,
    ];
    const GOLDEN_EXP_NS: [u64; 3] = [172593, 127746, 371590];
}
