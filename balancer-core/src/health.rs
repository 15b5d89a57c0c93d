//! Active health: probe results, with rise and fall thresholds, turn into up and down.

/// How many probe results in a row change a backend's health, as HAProxy's `rise` and `fall`.
///
/// The driver runs the probes (an HTTP GET, say) and reports each result with
/// [`crate::Scheduler::handle_health_check`]; the core keeps the streaks and decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Passing probes in a row that bring a down backend up.
    pub rise: u32,
    /// Failing probes in a row that take an up backend down.
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    /// HAProxy's defaults.
    fn default() -> Self {
        HealthCheckConfig { rise: 2, fall: 3 }
    }
}

/// A change of health decided by a probe result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthTransition {
    /// The backend was down and is up again.
    WentUp,
    /// The backend was up and is now down.
    WentDown,
}
