//! Measurement output: one run's summary (JSON or table) from its histograms and counters.

use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::{RunStats, SimConfig};

/// Sojourn-time figures, in milliseconds of virtual time, of successful requests.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Exact mean.
    pub mean: f64,
    /// Median (HDR histogram, 3 significant digits).
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// One backend's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendDetail {
    /// Service distribution, e.g. `exp:1ms`.
    pub service: String,
    /// Servers.
    pub concurrency: u32,
    /// Configured speed factor.
    pub speed: f64,
    /// Requests completed with success.
    pub served: u64,
    /// Tries failed on it.
    pub failed: u64,
    /// Busy fraction of its servers over its life.
    pub utilization: f64,
    /// Longest waiting queue.
    pub max_queue: usize,
    /// Removed before the end.
    pub removed: bool,
}

/// Everything `balancer-sim run` prints. All fields but `sim_requests_per_s` and `wall_s`
/// are a function of the config; those two are zero when the caller zeroes wall time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Policy name.
    pub policy: String,
    /// Initial fleet size.
    pub backends: usize,
    /// Offered load ρ.
    pub load: f64,
    /// Requests asked for.
    pub requests: u64,
    /// The seed.
    pub seed: u64,
    /// Service distribution of the initial fleet, or `mixed`.
    pub service: String,
    /// Arrival process.
    pub arrivals: String,
    /// Requests submitted to the core.
    pub submitted: u64,
    /// Requests completed with success.
    pub completed: u64,
    /// Requests failed (after retries).
    pub failed: u64,
    /// Failed tries that were retried.
    pub retries: u64,
    /// Requests rejected by the core.
    pub rejected: u64,
    /// Sojourn times of successful requests.
    pub latency_ms: LatencyMs,
    /// Requests served (successfully) per sim backend, in sim-index order.
    pub per_backend: Vec<u64>,
    /// Per sim backend details.
    pub per_backend_detail: Vec<BackendDetail>,
    /// Virtual time of the last event, in seconds.
    pub virtual_time_s: f64,
    /// Events handled.
    pub events: u64,
    /// FNV-1a hash of every decision and done, hex.
    pub trace_hash: String,
    /// Simulated requests per wall-clock second (the only non-deterministic field with `wall_s`).
    pub sim_requests_per_s: f64,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
}

const NS_PER_MS: f64 = 1e6;

/// Header of the markdown table that `compare` and `replay --compare` reports share.
pub const MARKDOWN_HEADER: &str = "| policy | mean ms | p50 ms | p99 ms | p99.9 ms | max ms | completed | failed | rejected |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|";

impl Summary {
    /// This run as one row of the table under [`MARKDOWN_HEADER`].
    pub fn markdown_row(&self, label: &str) -> String {
        let m = &self.latency_ms;
        format!(
            "| {label} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            m.mean, m.p50, m.p99, m.p999, m.max, self.completed, self.failed, self.rejected
        )
    }

    /// Summarises `stats` of a run of `config` that took `wall_s` seconds (0 to leave it out).
    pub fn new(config: &SimConfig, stats: &RunStats, wall_s: f64) -> Self {
        let h = &stats.sojourn_ns;
        let q = |quantile: f64| {
            if stats.completed == 0 {
                0.0
            } else {
                h.value_at_quantile(quantile) as f64 / NS_PER_MS
            }
        };
        let first = config.fleet[0].service;
        let service = if config.fleet.iter().all(|s| s.service == first) {
            first.to_string()
        } else {
            "mixed".to_owned()
        };
        Summary {
            policy: config.policy.to_string(),
            backends: config.fleet.len(),
            load: config.load,
            requests: config.requests,
            seed: config.seed,
            service,
            arrivals: config.arrivals.to_string(),
            submitted: stats.submitted,
            completed: stats.completed,
            failed: stats.failed,
            retries: stats.retries,
            rejected: stats.rejected,
            latency_ms: LatencyMs {
                mean: stats.mean_sojourn_ns() / NS_PER_MS,
                p50: q(0.5),
                p99: q(0.99),
                p999: q(0.999),
                max: if stats.completed == 0 {
                    0.0
                } else {
                    h.max() as f64 / NS_PER_MS
                },
            },
            per_backend: stats.backends.iter().map(|b| b.served).collect(),
            per_backend_detail: stats
                .backends
                .iter()
                .map(|b| BackendDetail {
                    service: b.spec.service.to_string(),
                    concurrency: b.spec.concurrency,
                    speed: b.spec.speed,
                    served: b.served,
                    failed: b.failed,
                    utilization: b.utilization,
                    max_queue: b.max_queue,
                    removed: b.removed,
                })
                .collect(),
            virtual_time_s: stats.end_ns as f64 / 1e9,
            events: stats.events,
            trace_hash: format!("{:016x}", stats.trace_hash),
            sim_requests_per_s: if wall_s > 0.0 {
                stats.submitted as f64 / wall_s
            } else {
                0.0
            },
            wall_s,
        }
    }

    /// One JSON object, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "policy {}  backends {}  load {}  requests {}  seed {}  service {}  arrivals {}",
            self.policy,
            self.backends,
            self.load,
            self.requests,
            self.seed,
            self.service,
            self.arrivals
        );
        let _ = writeln!(
            out,
            "submitted {}  completed {}  failed {}  rejected {}  retries {}  virtual time {:.3}s  trace {}",
            self.submitted,
            self.completed,
            self.failed,
            self.rejected,
            self.retries,
            self.virtual_time_s,
            self.trace_hash
        );
        let _ = writeln!(
            out,
            "latency ms: mean {:.4}  p50 {:.4}  p99 {:.4}  p99.9 {:.4}  max {:.4}",
            l.mean, l.p50, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            out,
            "{:>7} {:>16} {:>6} {:>10} {:>8} {:>6} {:>9}",
            "backend", "service", "speed", "served", "failed", "util", "max queue"
        );
        for (i, b) in self.per_backend_detail.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>7} {:>16} {:>6} {:>10} {:>8} {:>6.3} {:>9}{}",
                i,
                b.service,
                b.speed,
                b.served,
                b.failed,
                b.utilization,
                b.max_queue,
                if b.removed { "  (removed)" } else { "" }
            );
        }
        if self.wall_s > 0.0 {
            let _ = writeln!(
                out,
                "wall {:.3}s  {:.0} simulated requests/s",
                self.wall_s, self.sim_requests_per_s
            );
        }
        out
    }
}

/// A command line that replays `config` exactly. Fleets and faults that the flags cannot say
/// are written to a scenario file in the temp directory, named by the seed.
pub fn replay_command(config: &SimConfig) -> String {
    let mut cmd = format!(
        "cargo run --release -p balancer-sim -- run --policy {} --load {:?} --requests {} --seed {} --arrivals {} --max-in-flight {} --non-idempotent-percent {} --keys {} --check-invariants",
        config.policy,
        config.load,
        config.requests,
        config.seed,
        config.arrivals,
        config.max_in_flight,
        config.non_idempotent_percent,
        config.keys
    );
    let first = config.fleet[0];
    let uniform =
        config.fleet.iter().all(|s| *s == first) && first.speed == 1.0 && first.weight == 1;
    if uniform && config.faults.is_empty() && config.core == crate::engine::CoreOptions::default() {
        let _ = write!(
            cmd,
            " --backends {} --service {} --concurrency {}",
            config.fleet.len(),
            first.service,
            first.concurrency
        );
    } else {
        let path = std::env::temp_dir().join(format!("balancer-sim-replay-{}.toml", config.seed));
        let text = crate::faults::scenario_toml(&config.fleet, &config.core, &config.faults);
        match std::fs::write(&path, text) {
            Ok(()) => {
                let _ = write!(cmd, " --faults {}", path.display());
            }
            Err(e) => {
                let _ = write!(cmd, " --faults <could not write {}: {e}>", path.display());
            }
        }
    }
    cmd
}
