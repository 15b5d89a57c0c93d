//! The fault schedule and scenario files: crashes, black holes, spikes, slowdowns and fleet changes.

use std::path::Path;

use serde::Deserialize;

use std::time::Duration;

use balancer_core::{OutlierConfig, RetryConfig, SlowStartConfig};

use crate::backends::{BackendSpec, MAX_CONCURRENCY, MAX_SIM_BACKENDS};
use crate::distribution::{ServiceDist, SpecError, parse_duration_ns};
use crate::options::{CoreOptions, HashBound, HealthProbes};

/// Most fault entries in one scenario, after expansion of `count`s: each is an event.
pub const MAX_FAULTS: usize = 100_000;

/// A scenario that cannot be used; says which file and why.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or keys or values the format does not know.
    #[error("{file}: {message}")]
    Parse {
        /// The file (or `<scenario>`).
        file: String,
        /// Why, with line and column when known.
        message: String,
    },
    /// A fault names a backend that does not exist at its time, or a value out of range.
    #[error("{file}: fault #{index} ({what}): {message}")]
    Invalid {
        /// The file (or `<scenario>`).
        file: String,
        /// Position of the entry in the file, from 1 (0 for the fleet).
        index: usize,
        /// The entry's kind and time.
        what: String,
        /// Why.
        message: String,
    },
}

/// A user-level change at a point of virtual time. Backends are named by their sim index:
/// the initial fleet is 0..n in order, each `add` takes the next index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultAction {
    /// The backend crashes: its in-flight requests fail (`Crashed`); new ones fail at once
    /// (`Connect`) until it recovers. It is marked down in the core `detect_after_ns` after
    /// the crash, or never (`None`: an undetected crash).
    Crash {
        /// Sim index.
        backend: u32,
        /// Delay until a health check would mark it down; `None` = never.
        detect_after_ns: Option<u64>,
    },
    /// A crashed backend is back, empty, and marked up.
    Recover {
        /// Sim index.
        backend: u32,
    },
    /// The backend answers every new request with an error at once (until `until_ns`).
    BlackHole {
        /// Sim index.
        backend: u32,
        /// When it heals (absolute time), or never.
        until_ns: Option<u64>,
    },
    /// A fraction `error_rate` of new requests fail at once with a server error (until
    /// `until_ns`); which ones is drawn from the faults RNG stream.
    Flaky {
        /// Sim index.
        backend: u32,
        /// Probability that a request fails, in (0, 1].
        error_rate: f64,
        /// When it heals (absolute time), or never.
        until_ns: Option<u64>,
    },
    /// Service times starting in `[at, at + duration)` are multiplied by `factor`, on one
    /// backend or (`None`) all. Windows on the same target do not stack: the end resets to 1.
    Spike {
        /// Sim index, or every backend.
        backend: Option<u32>,
        /// Length of the window.
        duration_ns: u64,
        /// Multiplier of service times.
        factor: f64,
    },
    /// The backend's speed becomes `speed` (until `until_ns`, then its configured speed).
    Slowdown {
        /// Sim index.
        backend: u32,
        /// New speed factor.
        speed: f64,
        /// When it is restored (absolute time), or never.
        until_ns: Option<u64>,
    },
    /// A new backend joins.
    Add(BackendSpec),
    /// The backend leaves at once; in-flight requests finish on it but count as failed.
    Remove {
        /// Sim index.
        backend: u32,
    },
    /// The backend leaves the desired set, as on a reload without it: the core drains it and
    /// removes it at its last done (`Scheduler::reconcile`).
    Leave {
        /// Sim index.
        backend: u32,
    },
    /// The backend takes requests and never answers (until `until_ns`): each try there ends
    /// at `try_timeout` with a timeout.
    Stall {
        /// Sim index.
        backend: u32,
        /// When it answers again (absolute time), or never.
        until_ns: Option<u64>,
    },
    /// The backend takes no new work; in-flight work finishes.
    Drain {
        /// Sim index.
        backend: u32,
    },
    /// Undoes a drain.
    Undrain {
        /// Sim index.
        backend: u32,
    },
    /// The backend's weight in the core changes.
    Weight {
        /// Sim index.
        backend: u32,
        /// New weight.
        weight: u32,
    },
}

impl FaultAction {
    /// The kind as written in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultAction::Crash { .. } => "crash",
            FaultAction::Recover { .. } => "recover",
            FaultAction::BlackHole { .. } => "black-hole",
            FaultAction::Flaky { .. } => "flaky",
            FaultAction::Spike { .. } => "spike",
            FaultAction::Slowdown { .. } => "slowdown",
            FaultAction::Add(_) => "add",
            FaultAction::Remove { .. } => "remove",
            FaultAction::Leave { .. } => "leave",
            FaultAction::Stall { .. } => "stall",
            FaultAction::Drain { .. } => "drain",
            FaultAction::Undrain { .. } => "undrain",
            FaultAction::Weight { .. } => "weight",
        }
    }

    fn backend(&self) -> Option<u32> {
        match *self {
            FaultAction::Crash { backend, .. }
            | FaultAction::Recover { backend }
            | FaultAction::BlackHole { backend, .. }
            | FaultAction::Flaky { backend, .. }
            | FaultAction::Slowdown { backend, .. }
            | FaultAction::Remove { backend }
            | FaultAction::Leave { backend }
            | FaultAction::Stall { backend, .. }
            | FaultAction::Drain { backend }
            | FaultAction::Undrain { backend }
            | FaultAction::Weight { backend, .. } => Some(backend),
            FaultAction::Spike { backend, .. } => backend,
            FaultAction::Add(_) => None,
        }
    }
}

/// One scheduled change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    /// When, in virtual ns from the start.
    pub at_ns: u64,
    /// What.
    pub action: FaultAction,
}

/// A primitive step the engine carries out; a [`Fault`] expands into one or two of these.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// Fail in-flight work, fail new work until recovery.
    Crash(u32),
    /// Mark down in the core if still crashed (a health check noticing the crash).
    Detect(u32),
    /// Back from a crash, and marked up.
    Recover(u32),
    /// Black hole on or off.
    BlackHole(u32, bool),
    /// Error rate of a flaky backend (0 = healthy).
    Flaky(u32, f64),
    /// Spike multiplier on one backend or all.
    Spike(Option<u32>, f64),
    /// Speed to the given value, or back to the configured one.
    Speed(u32, Option<f64>),
    /// A backend joins.
    Add(BackendSpec),
    /// A backend leaves at once.
    Remove(u32),
    /// A backend leaves the desired set (drained, removed by the core at its last done).
    Leave(u32),
    /// Stall on or off.
    Stall(u32, bool),
    /// Drain on or off.
    Drain(u32, bool),
    /// New weight.
    Weight(u32, u32),
}

/// Sorts faults by time (stable: ties keep their order), checks every backend reference
/// against the fleet at that time, and expands them into timed [`Step`]s, sorted by time.
pub fn compile(
    faults: &[Fault],
    initial_backends: usize,
    file: &str,
) -> Result<Vec<(u64, Step)>, ScenarioError> {
    if faults.len() > MAX_FAULTS {
        return Err(ScenarioError::Parse {
            file: file.to_owned(),
            message: format!("{} faults, at most {MAX_FAULTS} are allowed", faults.len()),
        });
    }
    let mut order: Vec<usize> = (0..faults.len()).collect();
    order.sort_by_key(|&i| faults[i].at_ns);
    let mut removed = vec![false; initial_backends];
    let mut steps = Vec::with_capacity(faults.len() * 2);
    for i in order {
        let fault = &faults[i];
        let invalid = |message: String| ScenarioError::Invalid {
            file: file.to_owned(),
            index: i + 1,
            what: format!(
                "{} at {}",
                fault.action.kind(),
                crate::distribution::format_duration_ns(fault.at_ns)
            ),
            message,
        };
        if let Some(b) = fault.action.backend() {
            match removed.get(b as usize) {
                None => {
                    return Err(invalid(format!(
                        "backend {b} does not exist then: backends 0..{} exist (the initial fleet, then one per add)",
                        removed.len()
                    )));
                }
                Some(true) => return Err(invalid(format!("backend {b} was removed before"))),
                Some(false) => {}
            }
        }
        let at = fault.at_ns;
        let end = |until: u64| -> Result<u64, ScenarioError> {
            if until < at {
                Err(invalid("`until` is before `at`".into()))
            } else {
                Ok(until)
            }
        };
        match fault.action {
            FaultAction::Crash {
                backend,
                detect_after_ns,
            } => {
                steps.push((at, Step::Crash(backend)));
                if let Some(delay) = detect_after_ns {
                    steps.push((at.saturating_add(delay), Step::Detect(backend)));
                }
            }
            FaultAction::Recover { backend } => steps.push((at, Step::Recover(backend))),
            FaultAction::BlackHole { backend, until_ns } => {
                steps.push((at, Step::BlackHole(backend, true)));
                if let Some(until) = until_ns {
                    steps.push((end(until)?, Step::BlackHole(backend, false)));
                }
            }
            FaultAction::Flaky {
                backend,
                error_rate,
                until_ns,
            } => {
                if !(error_rate > 0.0 && error_rate <= 1.0) {
                    return Err(invalid(format!(
                        "error_rate must be in (0, 1], got {error_rate}"
                    )));
                }
                steps.push((at, Step::Flaky(backend, error_rate)));
                if let Some(until) = until_ns {
                    steps.push((end(until)?, Step::Flaky(backend, 0.0)));
                }
            }
            FaultAction::Spike {
                backend,
                duration_ns,
                factor,
            } => {
                if !(factor.is_finite() && factor > 0.0 && factor <= 1e6) {
                    return Err(invalid(format!("factor must be in (0, 1e6], got {factor}")));
                }
                steps.push((at, Step::Spike(backend, factor)));
                steps.push((at.saturating_add(duration_ns), Step::Spike(backend, 1.0)));
            }
            FaultAction::Slowdown {
                backend,
                speed,
                until_ns,
            } => {
                check_speed(speed).map_err(invalid)?;
                steps.push((at, Step::Speed(backend, Some(speed))));
                if let Some(until) = until_ns {
                    steps.push((end(until)?, Step::Speed(backend, None)));
                }
            }
            FaultAction::Add(spec) => {
                check_spec(&spec).map_err(invalid)?;
                if removed.len() >= MAX_SIM_BACKENDS {
                    return Err(invalid(format!("more than {MAX_SIM_BACKENDS} backends")));
                }
                removed.push(false);
                steps.push((at, Step::Add(spec)));
            }
            FaultAction::Remove { backend } => {
                removed[backend as usize] = true;
                steps.push((at, Step::Remove(backend)));
            }
            FaultAction::Leave { backend } => {
                removed[backend as usize] = true;
                steps.push((at, Step::Leave(backend)));
            }
            FaultAction::Stall { backend, until_ns } => {
                steps.push((at, Step::Stall(backend, true)));
                if let Some(until) = until_ns {
                    steps.push((end(until)?, Step::Stall(backend, false)));
                }
            }
            FaultAction::Drain { backend } => steps.push((at, Step::Drain(backend, true))),
            FaultAction::Undrain { backend } => steps.push((at, Step::Drain(backend, false))),
            FaultAction::Weight { backend, weight } => {
                if !(1..=balancer_core::MAX_WEIGHT).contains(&weight) {
                    return Err(invalid(format!(
                        "weight must be in 1..={}",
                        balancer_core::MAX_WEIGHT
                    )));
                }
                steps.push((at, Step::Weight(backend, weight)));
            }
        }
    }
    // Stable: generated end steps keep their order relative to entries at the same time.
    steps.sort_by_key(|&(at, _)| at);
    Ok(steps)
}

fn check_speed(speed: f64) -> Result<(), String> {
    if speed.is_finite() && (1e-3..=1e3).contains(&speed) {
        Ok(())
    } else {
        Err(format!("speed must be in [0.001, 1000], got {speed}"))
    }
}

/// Checks a backend's numbers are in range; says which one is not.
pub fn check_spec(spec: &BackendSpec) -> Result<(), String> {
    check_speed(spec.speed)?;
    if !(1..=MAX_CONCURRENCY).contains(&spec.concurrency) {
        return Err(format!(
            "concurrency must be in 1..={MAX_CONCURRENCY}, got {}",
            spec.concurrency
        ));
    }
    if !(1..=balancer_core::MAX_WEIGHT).contains(&spec.weight) {
        return Err(format!(
            "weight must be in 1..={}, got {}",
            balancer_core::MAX_WEIGHT,
            spec.weight
        ));
    }
    Ok(())
}

/// A scenario file: an optional fleet, the core's optional features, and a fault schedule.
/// See docs/simulator.md, "Scenario files".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scenario {
    /// The initial fleet, if the file gives one (else the CLI's `--backends` etc.).
    pub fleet: Option<Vec<BackendSpec>>,
    /// Outlier ejection, per-backend cap, retries, health checks (all off unless given).
    pub core: CoreOptions,
    /// The schedule, in file order.
    pub faults: Vec<Fault>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CoreEntry {
    max_pending_per_backend: Option<u32>,
    panic_threshold_percent: Option<u8>,
    slow_start: Option<SlowStartEntry>,
    outlier: Option<OutlierEntry>,
    retry: Option<RetryEntry>,
    health: Option<HealthEntry>,
    try_timeout: Option<String>,
    /// consistent-hash: a number ≥ 1.0, or "unbounded".
    hash_load_factor: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutlierEntry {
    consecutive_failures: Option<u32>,
    base_ejection: Option<String>,
    max_ejection: Option<String>,
    max_ejected_percent: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryEntry {
    max_retries: Option<u32>,
    retry_on_503: Option<bool>,
    retry_on_status: Option<Vec<u16>>,
    budget_ratio: Option<f64>,
    budget_min_per_s: Option<u32>,
    budget_window: Option<String>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowStartEntry {
    window: Option<String>,
    min_weight_percent: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthEntry {
    interval: String,
    rise: Option<u32>,
    fall: Option<u32>,
}

impl CoreEntry {
    /// The options, with the core's defaults for what the file leaves out.
    fn options(&self) -> Result<CoreOptions, String> {
        let dur = |s: &Option<String>, default: Duration| -> Result<Duration, String> {
            match s {
                Some(text) => parse_duration_ns(text)
                    .map(Duration::from_nanos)
                    .map_err(|e| e.to_string()),
                None => Ok(default),
            }
        };
        let outlier = match &self.outlier {
            None => None,
            Some(o) => {
                let d = OutlierConfig::default();
                Some(OutlierConfig {
                    consecutive_failures: o.consecutive_failures.unwrap_or(d.consecutive_failures),
                    base_ejection: dur(&o.base_ejection, d.base_ejection)?,
                    max_ejection: dur(&o.max_ejection, d.max_ejection)?,
                    max_ejected_percent: o.max_ejected_percent.unwrap_or(d.max_ejected_percent),
                })
            }
        };
        let retry = match &self.retry {
            None => None,
            Some(r) => {
                let d = RetryConfig::default();
                Some(RetryConfig {
                    max_retries: r.max_retries.unwrap_or(d.max_retries),
                    retry_on_status: {
                        let mut set = balancer_core::StatusSet::from_codes(
                            r.retry_on_status.as_deref().unwrap_or_default(),
                        )
                        .map_err(|e| format!("retry_on_status: {e}"))?;
                        if r.retry_on_503 == Some(true) {
                            let _ = set.insert(503);
                        }
                        set
                    },
                    budget_ratio: r.budget_ratio.unwrap_or(d.budget_ratio),
                    budget_min_per_s: r.budget_min_per_s.unwrap_or(d.budget_min_per_s),
                    budget_window: dur(&r.budget_window, d.budget_window)?,
                    backoff_base: dur(&r.backoff_base, d.backoff_base)?,
                    backoff_max: dur(&r.backoff_max, d.backoff_max)?,
                    ..d
                })
            }
        };
        let health = match &self.health {
            None => None,
            Some(h) => {
                let d = balancer_core::HealthCheckConfig::default();
                Some(HealthProbes {
                    interval_ns: parse_duration_ns(&h.interval).map_err(|e| e.to_string())?,
                    rise: h.rise.unwrap_or(d.rise),
                    fall: h.fall.unwrap_or(d.fall),
                })
            }
        };
        let slow_start = match &self.slow_start {
            None => None,
            Some(w) => {
                let d = SlowStartConfig::default();
                Some(SlowStartConfig {
                    window: dur(&w.window, d.window)?,
                    min_weight_percent: w.min_weight_percent.unwrap_or(d.min_weight_percent),
                })
            }
        };
        Ok(CoreOptions {
            outlier,
            max_pending_per_backend: self.max_pending_per_backend,
            retry,
            health,
            slow_start,
            panic_threshold_percent: self.panic_threshold_percent,
            try_timeout_ns: match &self.try_timeout {
                Some(text) => Some(parse_duration_ns(text).map_err(|e| e.to_string())?),
                None => None,
            },
            hash_bound: match &self.hash_load_factor {
                None => HashBound::Default,
                Some(value) => parse_hash_bound(value)?,
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    description: Option<String>,
    core: Option<CoreEntry>,
    #[serde(default)]
    backend: Vec<BackendEntry>,
    #[serde(default)]
    fault: Vec<RawFault>,
}

/// A `[[fault]]` table as written: every key any kind takes, so that the TOML decoder points a
/// wrong type or an unknown key at its own line (a table tagged by `kind` would be buffered
/// first, and every error would point at the `[[fault]]` header). [`RawFault::entry`] then
/// checks the keys against the kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: toml::Spanned<String>,
    at: Option<String>,
    backend: Option<u32>,
    detect_after: Option<String>,
    until: Option<String>,
    error_rate: Option<f64>,
    duration: Option<String>,
    factor: Option<f64>,
    speed: Option<f64>,
    count: Option<u32>,
    service: Option<String>,
    concurrency: Option<u32>,
    weight: Option<u32>,
}

/// Every kind of fault and the keys it takes besides `kind` (required ones first, then `|`,
/// then optional ones).
const FAULT_KINDS: [(&str, &[&str], &[&str]); 13] = [
    ("crash", &["at", "backend"], &["detect_after"]),
    ("recover", &["at", "backend"], &[]),
    ("black-hole", &["at", "backend"], &["until"]),
    ("flaky", &["at", "backend", "error_rate"], &["until"]),
    ("spike", &["at", "duration", "factor"], &["backend"]),
    ("slowdown", &["at", "backend", "speed"], &["until"]),
    (
        "add",
        &["at"],
        &["count", "service", "concurrency", "speed", "weight"],
    ),
    ("leave", &["at", "backend"], &[]),
    ("stall", &["at", "backend"], &["until"]),
    ("remove", &["at", "backend"], &[]),
    ("drain", &["at", "backend"], &[]),
    ("undrain", &["at", "backend"], &[]),
    ("weight", &["at", "backend", "weight"], &[]),
];

impl RawFault {
    /// The keys this table sets, besides `kind`.
    fn present(&self) -> Vec<&'static str> {
        let keys = [
            ("at", self.at.is_some()),
            ("backend", self.backend.is_some()),
            ("detect_after", self.detect_after.is_some()),
            ("until", self.until.is_some()),
            ("error_rate", self.error_rate.is_some()),
            ("duration", self.duration.is_some()),
            ("factor", self.factor.is_some()),
            ("speed", self.speed.is_some()),
            ("count", self.count.is_some()),
            ("service", self.service.is_some()),
            ("concurrency", self.concurrency.is_some()),
            ("weight", self.weight.is_some()),
        ];
        keys.into_iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| k)
            .collect()
    }

    /// The fault this table describes, or what is wrong with its keys.
    fn entry(self) -> Result<FaultEntry, String> {
        let kind = self.kind.get_ref().as_str();
        let Some((_, required, optional)) = FAULT_KINDS.iter().find(|(k, _, _)| *k == kind) else {
            let kinds: Vec<&str> = FAULT_KINDS.iter().map(|(k, _, _)| *k).collect();
            return Err(format!(
                "unknown fault kind `{kind}`; write one of {}",
                kinds.join(", ")
            ));
        };
        let present = self.present();
        if let Some(extra) = present
            .iter()
            .find(|k| !required.contains(k) && !optional.contains(k))
        {
            let mut takes: Vec<&str> = required.to_vec();
            takes.extend(optional.iter());
            return Err(format!(
                "a `{kind}` fault has no key `{extra}`; it takes {}",
                takes.join(", ")
            ));
        }
        if let Some(missing) = required.iter().find(|k| !present.contains(k)) {
            return Err(format!("a `{kind}` fault needs `{missing}`"));
        }
        // Present by the check above: the unwraps cannot fail.
        let at = self.at.unwrap_or_default();
        let backend = self.backend.unwrap_or_default();
        Ok(match kind {
            "crash" => FaultEntry::Crash {
                at,
                backend,
                detect_after: self.detect_after,
            },
            "recover" => FaultEntry::Recover { at, backend },
            "black-hole" => FaultEntry::BlackHole {
                at,
                backend,
                until: self.until,
            },
            "flaky" => FaultEntry::Flaky {
                at,
                backend,
                error_rate: self.error_rate.unwrap_or_default(),
                until: self.until,
            },
            "spike" => FaultEntry::Spike {
                at,
                backend: self.backend,
                duration: self.duration.unwrap_or_default(),
                factor: self.factor.unwrap_or_default(),
            },
            "slowdown" => FaultEntry::Slowdown {
                at,
                backend,
                speed: self.speed.unwrap_or_default(),
                until: self.until,
            },
            "add" => FaultEntry::Add {
                at,
                count: self.count.unwrap_or(1),
                service: self.service,
                concurrency: self.concurrency,
                speed: self.speed,
                weight: self.weight,
            },
            "leave" => FaultEntry::Leave { at, backend },
            "stall" => FaultEntry::Stall {
                at,
                backend,
                until: self.until,
            },
            "remove" => FaultEntry::Remove { at, backend },
            "drain" => FaultEntry::Drain { at, backend },
            "undrain" => FaultEntry::Undrain { at, backend },
            _ => FaultEntry::Weight {
                at,
                backend,
                weight: self.weight.unwrap_or_default(),
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendEntry {
    #[serde(default = "one")]
    count: u32,
    service: Option<String>,
    concurrency: Option<u32>,
    speed: Option<f64>,
    weight: Option<u32>,
}

fn one() -> u32 {
    1
}

/// A `[[fault]]` table whose keys fit its kind.
enum FaultEntry {
    Crash {
        at: String,
        backend: u32,
        /// A duration, or "never"; default: detected at once.
        detect_after: Option<String>,
    },
    Recover {
        at: String,
        backend: u32,
    },
    BlackHole {
        at: String,
        backend: u32,
        until: Option<String>,
    },
    Flaky {
        at: String,
        backend: u32,
        error_rate: f64,
        until: Option<String>,
    },
    Spike {
        at: String,
        backend: Option<u32>,
        duration: String,
        factor: f64,
    },
    Slowdown {
        at: String,
        backend: u32,
        speed: f64,
        until: Option<String>,
    },
    Add {
        at: String,
        count: u32,
        service: Option<String>,
        concurrency: Option<u32>,
        speed: Option<f64>,
        weight: Option<u32>,
    },
    Leave {
        at: String,
        backend: u32,
    },
    Stall {
        at: String,
        backend: u32,
        until: Option<String>,
    },
    Remove {
        at: String,
        backend: u32,
    },
    Drain {
        at: String,
        backend: u32,
    },
    Undrain {
        at: String,
        backend: u32,
    },
    Weight {
        at: String,
        backend: u32,
        weight: u32,
    },
}

impl Scenario {
    /// Reads and parses a scenario file; `defaults` fills what a backend entry leaves out.
    pub fn load(path: &Path, defaults: BackendSpec) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            file: file.clone(),
            source,
        })?;
        Scenario::parse(&text, &file, defaults)
    }

    /// Parses scenario TOML; `file` names it in errors.
    pub fn parse(text: &str, file: &str, defaults: BackendSpec) -> Result<Scenario, ScenarioError> {
        let parsed: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let _ = parsed.description;
        let core = match &parsed.core {
            Some(entry) => entry.options().map_err(|message| ScenarioError::Invalid {
                file: file.to_owned(),
                index: 0,
                what: "[core]".into(),
                message,
            })?,
            None => CoreOptions::default(),
        };
        let invalid = |index: usize, what: String, message: String| ScenarioError::Invalid {
            file: file.to_owned(),
            index,
            what,
            message,
        };
        let spec_of = |service: &Option<String>,
                       concurrency: Option<u32>,
                       speed: Option<f64>,
                       weight: Option<u32>|
         -> Result<BackendSpec, String> {
            let service = match service {
                Some(s) => s.parse::<ServiceDist>().map_err(|e| e.to_string())?,
                None => defaults.service,
            };
            let spec = BackendSpec {
                service,
                concurrency: concurrency.unwrap_or(defaults.concurrency),
                speed: speed.unwrap_or(defaults.speed),
                weight: weight.unwrap_or(defaults.weight),
            };
            check_spec(&spec)?;
            Ok(spec)
        };
        let fleet = if parsed.backend.is_empty() {
            None
        } else {
            let mut fleet = Vec::new();
            for (i, entry) in parsed.backend.iter().enumerate() {
                let spec = spec_of(&entry.service, entry.concurrency, entry.speed, entry.weight)
                    .map_err(|m| invalid(0, format!("backend entry #{}", i + 1), m))?;
                if fleet.len() + entry.count as usize > MAX_SIM_BACKENDS {
                    return Err(invalid(
                        0,
                        format!("backend entry #{}", i + 1),
                        format!("more than {MAX_SIM_BACKENDS} backends"),
                    ));
                }
                fleet.extend(std::iter::repeat_n(spec, entry.count as usize));
            }
            Some(fleet)
        };
        let mut entries = Vec::with_capacity(parsed.fault.len());
        for raw in parsed.fault {
            let span = raw.kind.span();
            let entry = raw.entry().map_err(|message| {
                let (line, column) = line_column(text, span.start);
                ScenarioError::Parse {
                    file: file.to_owned(),
                    message: format!("line {line}, column {column}: {message}"),
                }
            })?;
            entries.push(entry);
        }
        let mut faults = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let index = i + 1;
            let what = || format!("entry of kind {}", entry_kind(entry));
            let dur = |s: &str| -> Result<u64, ScenarioError> {
                parse_duration_ns(s).map_err(|e: SpecError| invalid(index, what(), e.to_string()))
            };
            let opt_dur = |s: &Option<String>| -> Result<Option<u64>, ScenarioError> {
                s.as_deref().map(dur).transpose()
            };
            let (at, action) = match entry {
                FaultEntry::Crash {
                    at,
                    backend,
                    detect_after,
                } => {
                    let detect_after_ns = match detect_after.as_deref() {
                        None => Some(0),
                        Some("never") => None,
                        Some(d) => Some(dur(d)?),
                    };
                    (
                        at,
                        FaultAction::Crash {
                            backend: *backend,
                            detect_after_ns,
                        },
                    )
                }
                FaultEntry::Recover { at, backend } => {
                    (at, FaultAction::Recover { backend: *backend })
                }
                FaultEntry::BlackHole { at, backend, until } => (
                    at,
                    FaultAction::BlackHole {
                        backend: *backend,
                        until_ns: opt_dur(until)?,
                    },
                ),
                FaultEntry::Flaky {
                    at,
                    backend,
                    error_rate,
                    until,
                } => (
                    at,
                    FaultAction::Flaky {
                        backend: *backend,
                        error_rate: *error_rate,
                        until_ns: opt_dur(until)?,
                    },
                ),
                FaultEntry::Spike {
                    at,
                    backend,
                    duration,
                    factor,
                } => (
                    at,
                    FaultAction::Spike {
                        backend: *backend,
                        duration_ns: dur(duration)?,
                        factor: *factor,
                    },
                ),
                FaultEntry::Slowdown {
                    at,
                    backend,
                    speed,
                    until,
                } => (
                    at,
                    FaultAction::Slowdown {
                        backend: *backend,
                        speed: *speed,
                        until_ns: opt_dur(until)?,
                    },
                ),
                FaultEntry::Add {
                    at,
                    count,
                    service,
                    concurrency,
                    speed,
                    weight,
                } => {
                    let spec = spec_of(service, *concurrency, *speed, *weight)
                        .map_err(|m| invalid(index, what(), m))?;
                    let at_ns = dur(at)?;
                    if *count as usize > MAX_SIM_BACKENDS {
                        return Err(invalid(index, what(), "count too large".into()));
                    }
                    for _ in 1..*count {
                        faults.push(Fault {
                            at_ns,
                            action: FaultAction::Add(spec),
                        });
                    }
                    (at, FaultAction::Add(spec))
                }
                FaultEntry::Remove { at, backend } => {
                    (at, FaultAction::Remove { backend: *backend })
                }
                FaultEntry::Leave { at, backend } => (at, FaultAction::Leave { backend: *backend }),
                FaultEntry::Stall { at, backend, until } => (
                    at,
                    FaultAction::Stall {
                        backend: *backend,
                        until_ns: opt_dur(until)?,
                    },
                ),
                FaultEntry::Drain { at, backend } => (at, FaultAction::Drain { backend: *backend }),
                FaultEntry::Undrain { at, backend } => {
                    (at, FaultAction::Undrain { backend: *backend })
                }
                FaultEntry::Weight {
                    at,
                    backend,
                    weight,
                } => (
                    at,
                    FaultAction::Weight {
                        backend: *backend,
                        weight: *weight,
                    },
                ),
            };
            faults.push(Fault {
                at_ns: dur(at)?,
                action,
            });
            if faults.len() > MAX_FAULTS {
                return Err(invalid(
                    index,
                    what(),
                    format!("more than {MAX_FAULTS} faults"),
                ));
            }
        }
        Ok(Scenario {
            fleet,
            core,
            faults,
        })
    }
}

/// Writes `fleet` and `faults` as a scenario file that [`Scenario::parse`] reads back to the
/// same values (durations are whole nanoseconds, floats print in round-trip form).
pub fn scenario_toml(fleet: &[BackendSpec], core: &CoreOptions, faults: &[Fault]) -> String {
    use crate::distribution::format_duration_ns as d;
    use std::fmt::Write as _;
    let mut out = String::new();
    let ns = |t: Duration| d(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
    if *core != CoreOptions::default() {
        let _ = writeln!(out, "[core]");
        if let Some(cap) = core.max_pending_per_backend {
            let _ = writeln!(out, "max_pending_per_backend = {cap}");
        }
        if let Some(percent) = core.panic_threshold_percent {
            let _ = writeln!(out, "panic_threshold_percent = {percent}");
        }
        match core.hash_bound {
            HashBound::Default => {}
            HashBound::Factor(f) => {
                let _ = writeln!(out, "hash_load_factor = {f:?}");
            }
            HashBound::Unbounded => {
                let _ = writeln!(out, "hash_load_factor = \"unbounded\"");
            }
        }
        if let Some(timeout_ns) = core.try_timeout_ns {
            let _ = writeln!(out, "try_timeout = \"{}\"", d(timeout_ns));
        }
        if let Some(w) = core.slow_start {
            let _ = writeln!(
                out,
                "[core.slow_start]\nwindow = \"{}\"\nmin_weight_percent = {}",
                ns(w.window),
                w.min_weight_percent
            );
        }
        if let Some(o) = core.outlier {
            let _ = writeln!(
                out,
                "[core.outlier]\nconsecutive_failures = {}\nbase_ejection = \"{}\"\nmax_ejection = \"{}\"\nmax_ejected_percent = {}",
                o.consecutive_failures,
                ns(o.base_ejection),
                ns(o.max_ejection),
                o.max_ejected_percent
            );
        }
        if let Some(r) = core.retry {
            let _ = writeln!(
                out,
                "[core.retry]\nmax_retries = {}\nretry_on_status = {:?}\nbudget_ratio = {:?}\nbudget_min_per_s = {}\nbudget_window = \"{}\"\nbackoff_base = \"{}\"\nbackoff_max = \"{}\"",
                r.max_retries,
                r.retry_on_status.iter().collect::<Vec<_>>(),
                r.budget_ratio,
                r.budget_min_per_s,
                ns(r.budget_window),
                ns(r.backoff_base),
                ns(r.backoff_max)
            );
        }
        if let Some(h) = core.health {
            let _ = writeln!(
                out,
                "[core.health]\ninterval = \"{}\"\nrise = {}\nfall = {}",
                d(h.interval_ns),
                h.rise,
                h.fall
            );
        }
        let _ = writeln!(out);
    }
    let spec_fields = |out: &mut String, spec: &BackendSpec| {
        let _ = writeln!(
            out,
            "service = \"{}\"\nconcurrency = {}\nspeed = {:?}\nweight = {}",
            spec.service, spec.concurrency, spec.speed, spec.weight
        );
    };
    for spec in fleet {
        let _ = writeln!(out, "[[backend]]");
        spec_fields(&mut out, spec);
    }
    for fault in faults {
        let _ = writeln!(
            out,
            "\n[[fault]]\nkind = \"{}\"\nat = \"{}\"",
            fault.action.kind(),
            d(fault.at_ns)
        );
        let _ = match fault.action {
            FaultAction::Crash {
                backend,
                detect_after_ns,
            } => writeln!(
                out,
                "backend = {backend}\ndetect_after = \"{}\"",
                detect_after_ns.map_or("never".to_owned(), d)
            ),
            FaultAction::BlackHole { backend, until_ns }
            | FaultAction::Stall { backend, until_ns }
            | FaultAction::Slowdown {
                backend, until_ns, ..
            } => {
                let _ = writeln!(out, "backend = {backend}");
                if let FaultAction::Slowdown { speed, .. } = fault.action {
                    let _ = writeln!(out, "speed = {speed:?}");
                }
                match until_ns {
                    Some(until) => writeln!(out, "until = \"{}\"", d(until)),
                    None => Ok(()),
                }
            }
            FaultAction::Flaky {
                backend,
                error_rate,
                until_ns,
            } => {
                let _ = writeln!(out, "backend = {backend}\nerror_rate = {error_rate:?}");
                match until_ns {
                    Some(until) => writeln!(out, "until = \"{}\"", d(until)),
                    None => Ok(()),
                }
            }
            FaultAction::Spike {
                backend,
                duration_ns,
                factor,
            } => {
                if let Some(b) = backend {
                    let _ = writeln!(out, "backend = {b}");
                }
                writeln!(
                    out,
                    "duration = \"{}\"\nfactor = {factor:?}",
                    d(duration_ns)
                )
            }
            FaultAction::Add(spec) => {
                spec_fields(&mut out, &spec);
                Ok(())
            }
            FaultAction::Weight { backend, weight } => {
                writeln!(out, "backend = {backend}\nweight = {weight}")
            }
            FaultAction::Recover { backend }
            | FaultAction::Remove { backend }
            | FaultAction::Leave { backend }
            | FaultAction::Drain { backend }
            | FaultAction::Undrain { backend } => writeln!(out, "backend = {backend}"),
        };
    }
    out
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// `hash_load_factor = 1.25` or `"unbounded"`.
fn parse_hash_bound(value: &toml::Value) -> Result<HashBound, String> {
    let factor = match value {
        toml::Value::String(word) if word == "unbounded" => return Ok(HashBound::Unbounded),
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        _ => return Err("hash_load_factor takes a number of at least 1.0 or \"unbounded\"".into()),
    };
    if !(1.0..=100.0).contains(&factor) {
        return Err(format!(
            "hash_load_factor must be 1.0 to 100, or \"unbounded\"; got {factor}"
        ));
    }
    Ok(HashBound::Factor(factor))
}

fn entry_kind(entry: &FaultEntry) -> &'static str {
    match entry {
        FaultEntry::Crash { .. } => "crash",
        FaultEntry::Recover { .. } => "recover",
        FaultEntry::BlackHole { .. } => "black-hole",
        FaultEntry::Flaky { .. } => "flaky",
        FaultEntry::Spike { .. } => "spike",
        FaultEntry::Slowdown { .. } => "slowdown",
        FaultEntry::Add { .. } => "add",
        FaultEntry::Remove { .. } => "remove",
        FaultEntry::Leave { .. } => "leave",
        FaultEntry::Stall { .. } => "stall",
        FaultEntry::Drain { .. } => "drain",
        FaultEntry::Undrain { .. } => "undrain",
        FaultEntry::Weight { .. } => "weight",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> BackendSpec {
        BackendSpec::new("exp:1ms".parse().unwrap(), 1)
    }

    #[test]
    fn parses_fleet_and_faults() {
        let text = r#"
            description = "two fast, one slow; the slow one black-holes"
            [[backend]]
            count = 2
            [[backend]]
            service = "lognormal:2ms:0.5"
            speed = 0.5
            [[fault]]
            kind = "black-hole"
            at = "10ms"
            backend = 2
            until = "20ms"
            [[fault]]
            kind = "crash"
            at = "5ms"
            backend = 0
            detect_after = "never"
            [[fault]]
            kind = "add"
            at = "30ms"
            count = 2
        "#;
        let s = Scenario::parse(text, "t.toml", defaults()).unwrap();
        assert_eq!(s.fleet.as_ref().unwrap().len(), 3);
        assert_eq!(s.faults.len(), 4);
        let steps = compile(&s.faults, 3, "t.toml").unwrap();
        assert_eq!(steps[0], (5_000_000, Step::Crash(0)));
        assert_eq!(steps[1], (10_000_000, Step::BlackHole(2, true)));
        assert_eq!(steps[2], (20_000_000, Step::BlackHole(2, false)));
        assert_eq!(steps.len(), 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_file() {
        for (text, needle) in [
            ("colour = 1", "unknown field"),
            (
                "[[fault]]\nkind = \"crash\"\nat = \"1ms\"\nbackend = 0\nwhen = 3",
                "unknown field",
            ),
            (
                "[[fault]]\nkind = \"explode\"\nat = \"1ms\"",
                "line 2, column 8: unknown fault kind `explode`; write one of crash,",
            ),
            // Errors point at the key's own line, not at the [[fault]] header.
            (
                "[[fault]]\nkind = \"spike\"\nat = \"1s\"\nduration = \"2s\"\nfactor = \"x\"",
                "line 5, column 10",
            ),
            (
                "[[fault]]\nkind = \"spike\"\nat = \"1s\"\nduration = \"2s\"\nfactor = 2.0\nspeed = 3.0",
                "a `spike` fault has no key `speed`; it takes at, duration, factor, backend",
            ),
            (
                "[[fault]]\nkind = \"weight\"\nat = \"1s\"\nbackend = 0",
                "line 2, column 8: a `weight` fault needs `weight`",
            ),
            (
                "[[fault]]\nkind = \"crash\"\nat = \"1 parsec\"\nbackend = 0",
                "bad duration",
            ),
            ("[[backend]]\nservice = \"exp:0ms\"", "positive"),
            ("[[backend]]\nspeed = 0", "speed"),
        ] {
            let err = Scenario::parse(text, "bad.toml", defaults())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("bad.toml") && err.contains(needle),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn faults_on_missing_or_removed_backends_are_errors() {
        let crash = |backend| FaultAction::Crash {
            backend,
            detect_after_ns: Some(0),
        };
        let faults = [Fault {
            at_ns: 1,
            action: crash(3),
        }];
        assert!(
            compile(&faults, 3, "x")
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let faults = [
            Fault {
                at_ns: 1,
                action: FaultAction::Remove { backend: 1 },
            },
            Fault {
                at_ns: 2,
                action: crash(1),
            },
        ];
        assert!(
            compile(&faults, 3, "x")
                .unwrap_err()
                .to_string()
                .contains("removed")
        );
        let faults = [
            Fault {
                at_ns: 2,
                action: crash(3),
            },
            Fault {
                at_ns: 1,
                action: FaultAction::Add(defaults()),
            },
        ];
        assert!(compile(&faults, 3, "x").is_ok());
    }

    #[test]
    fn scenarios_round_trip_through_toml() {
        let fleet = vec![
            defaults(),
            BackendSpec {
                service: "pareto:1500us:1.7".parse().unwrap(),
                concurrency: 3,
                speed: 0.75,
                weight: 2,
            },
        ];
        let faults = vec![
            Fault {
                at_ns: 5,
                action: FaultAction::Crash {
                    backend: 1,
                    detect_after_ns: None,
                },
            },
            Fault {
                at_ns: 7,
                action: FaultAction::Spike {
                    backend: None,
                    duration_ns: 9,
                    factor: 2.5,
                },
            },
            Fault {
                at_ns: 8,
                action: FaultAction::Slowdown {
                    backend: 0,
                    speed: 0.5,
                    until_ns: Some(20),
                },
            },
            Fault {
                at_ns: 9,
                action: FaultAction::Add(defaults()),
            },
            Fault {
                at_ns: 10,
                action: FaultAction::Weight {
                    backend: 2,
                    weight: 3,
                },
            },
            Fault {
                at_ns: 11,
                action: FaultAction::Drain { backend: 2 },
            },
            Fault {
                at_ns: 12,
                action: FaultAction::Stall {
                    backend: 1,
                    until_ns: Some(13),
                },
            },
            Fault {
                at_ns: 14,
                action: FaultAction::Leave { backend: 2 },
            },
        ];
        let core = CoreOptions {
            outlier: Some(OutlierConfig::default()),
            max_pending_per_backend: Some(7),
            retry: Some(RetryConfig {
                retry_on_status: balancer_core::StatusSet::from_codes(&[503]).unwrap(),
                ..RetryConfig::default()
            }),
            health: Some(HealthProbes {
                interval_ns: 5_000_000,
                rise: 2,
                fall: 3,
            }),
            slow_start: Some(SlowStartConfig::default()),
            panic_threshold_percent: Some(50),
            try_timeout_ns: Some(250_000_000),
            hash_bound: HashBound::Factor(1.5),
        };
        let text = scenario_toml(&fleet, &core, &faults);
        let back = Scenario::parse(&text, "rt.toml", defaults()).unwrap();
        assert_eq!(back.fleet.unwrap(), fleet);
        assert_eq!(back.core, core);
        assert_eq!(back.faults, faults);
        let bare = scenario_toml(&fleet, &CoreOptions::default(), &faults);
        assert_eq!(
            Scenario::parse(&bare, "rt.toml", defaults()).unwrap().core,
            CoreOptions::default()
        );
    }
}
