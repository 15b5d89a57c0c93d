//! The core's optional features a simulation turns on, as plain data (shared by the scenario
//! files and the engine).

use balancer_core::{OutlierConfig, RetryConfig, SlowStartConfig};

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
    /// A try on a stalled backend fails with a timeout after this long (the proxy's
    /// `response_header_timeout_ms`). Required by scenarios with `stall` faults; backends that
    /// answer are never cut off (the simulator's answers are never late, only absent).
    pub try_timeout_ns: Option<u64>,
    /// Panic threshold (percent): below it the core spreads work over unhealthy backends too,
    /// so dispatches to backends marked down or ejected are then expected.
    pub panic_threshold_percent: Option<u8>,
    /// consistent-hash's load bound: the core's default, a factor, or none.
    pub hash_bound: HashBound,
}

/// consistent-hash's bound on a backend's share of the requests in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum HashBound {
    /// The core's default (`balancer_core::DEFAULT_HASH_LOAD_FACTOR`).
    #[default]
    Default,
    /// This load factor (at least 1.0).
    Factor(f64),
    /// No bound: a key always goes to its owner while it is eligible.
    Unbounded,
}

impl HashBound {
    /// As `SchedulerConfig::hash_load_factor`.
    pub fn load_factor(self) -> Option<f64> {
        match self {
            HashBound::Default => Some(balancer_core::DEFAULT_HASH_LOAD_FACTOR),
            HashBound::Factor(f) => Some(f),
            HashBound::Unbounded => None,
        }
    }
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
