//! What a run depends on (`SimConfig`), its checks, and the errors a run can end with.

use balancer_core::{CoreError, PolicyKind};

use crate::arrivals::ArrivalSpec;
use crate::backends::{BackendSpec, MAX_SIM_BACKENDS};
use crate::faults::{Fault, ScenarioError, check_spec, compile};
use crate::options::{CoreOptions, MIN_PROBE_INTERVAL_NS};

/// Most requests in one run: 10¹¹ is days of CPU; keeps counters and time sums far from overflow.
pub const MAX_REQUESTS: u64 = 100_000_000_000;

/// Highest load accepted: beyond 4× capacity a run only measures the core's rejections.
pub const MAX_LOAD: f64 = 4.0;

/// Longest a run may be expected to last in virtual time: 10¹⁸ ns (≈ 32 years) keeps every
/// event time well inside `u64` nanoseconds (≈ 584 years), so no timestamp saturates.
pub const MAX_EXPECTED_HORIZON_NS: f64 = 1e18;

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
    /// Percent of requests whose method may not be repeated (`MethodClass::NonIdempotent`),
    /// drawn per request from its own RNG stream; the rest are idempotent (GET).
    pub non_idempotent_percent: u8,
    /// Keep the core's journal of calls (see `balancer_core::journal`), the latest this many
    /// entries, in [`crate::RunStats::journal`]. 0: none.
    pub journal_capacity: usize,
    /// Seed the core's RNG as a live pool does (`ChaCha8Rng::seed_from_u64(policy_seed)`)
    /// instead of with the run's policy stream: for comparing a run with the proxy call for call.
    pub policy_seed: Option<u64>,
    /// The key each request carries, for consistent-hash (drawn from its own RNG stream).
    pub keys: crate::keys::KeySpec,
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
            non_idempotent_percent: 0,
            journal_capacity: 0,
            policy_seed: None,
            keys: crate::keys::KeySpec::None,
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
        if config.non_idempotent_percent > 100 {
            return Err(SimError::Config(format!(
                "non_idempotent_percent must be in 0..=100, got {}",
                config.non_idempotent_percent
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
        let stalls = config
            .faults
            .iter()
            .any(|f| matches!(f.action, crate::faults::FaultAction::Stall { .. }));
        if stalls && config.core.try_timeout_ns.is_none_or(|t| t == 0) {
            return Err(SimError::Config(
                "a `stall` fault needs a try timeout: set `try_timeout` in [core] (e.g. try_timeout = \"1s\"), or tries on the stalled backend never end".into(),
            ));
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
