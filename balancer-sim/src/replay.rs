//! Replay of recorded traffic (`balancer_core::trace`): the recorded arrivals through the simulator, "what if".
//!
//! Arrivals are the trace's `arrival_ns`, in time order, every record counted (a `rejected`
//! request still arrived). Service times are drawn, uniformly with replacement, from the
//! `service_ns` of the trace's `ok` records: per recorded backend address when the simulated
//! fleet has exactly one backend per address (addresses in sorted order ↔ sim backends
//! 0..n), otherwise from all of them pooled. `speed_factor` F divides service times by F
//! (F = 2: backends twice as fast). `failed`, `cancelled` and `rejected` records give no
//! service sample: their `service_ns` is time to failure, a partial wait, or nothing.
//!
//! Caveat: `service_ns` as recorded is dispatch → response headers, so it includes any
//! queueing inside the backend and one loopback round trip. With `concurrency` servers per
//! simulated backend the simulator queues again beyond that; for backends that serve many
//! requests in parallel (most HTTP servers) give their worker count, so that the replay
//! only adds the queueing the real backends would add.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use balancer_core::PolicyKind;
use balancer_core::trace::{TraceError, TraceOutcome, TraceRecord, parse_trace};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::backends::{BackendSpec, MAX_CONCURRENCY, MAX_SIM_BACKENDS};
use crate::distribution::ServiceDist;
use crate::engine::{CoreOptions, Replayed, SimConfig, SimError, run};
use crate::report::{LatencyMs, Summary};

/// Most records one replay takes: 10⁸ is ~10 GB of trace text; keeps arrival and sample
/// vectors (16 bytes a record) under 2 GB.
pub const MAX_TRACE_RECORDS: usize = 100_000_000;

/// Fastest and slowest speed factor: beyond these a replay says nothing about the recording.
pub const SPEED_FACTOR_RANGE: (f64, f64) = (0.01, 100.0);

/// How to replay a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayConfig {
    /// The policy to try.
    pub policy: PolicyKind,
    /// Simulated backends; `None`: one per recorded backend address (at least 1).
    /// Ignored when `fleet` is given.
    pub backends: Option<usize>,
    /// A fleet (e.g. from a scenario file's `[[backend]]`): count, concurrency, speed and
    /// weight are used; its service distributions are replaced by the trace's.
    pub fleet: Option<Vec<BackendSpec>>,
    /// Servers per simulated backend when `fleet` is not given (see the module's caveat).
    pub concurrency: u32,
    /// Service times are divided by it (2.0 = backends twice as fast).
    pub speed_factor: f64,
    /// Seed of the service-time draws and the policy's RNG.
    pub seed: u64,
    /// The core's defences (outlier ejection, retries, ...), off by default.
    pub core: CoreOptions,
    /// Call the core's `check_invariants()` after every event.
    pub check_invariants: bool,
}

impl ReplayConfig {
    /// One backend per recorded address, one server each, speed 1, seed 1, no defences.
    pub fn new(policy: PolicyKind) -> Self {
        ReplayConfig {
            policy,
            backends: None,
            fleet: None,
            concurrency: 1,
            speed_factor: 1.0,
            seed: 1,
            core: CoreOptions::default(),
            check_invariants: false,
        }
    }
}

/// Why a trace cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line does not parse (the error names the line).
    #[error("{file}: {source}")]
    Trace {
        /// The file.
        file: String,
        /// The line and what is wrong with it.
        source: TraceError,
    },
    /// Nothing to replay, or nothing to draw service times from.
    #[error("{0}")]
    Unusable(String),
    /// A setting out of range.
    #[error("invalid replay configuration: {0}")]
    Config(String),
    /// The simulation failed.
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// Reads and parses a trace file.
pub fn load_trace(path: &Path) -> Result<Vec<TraceRecord>, ReplayError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
        file: file.clone(),
        source,
    })?;
    parse_trace(&text).map_err(|source| ReplayError::Trace { file, source })
}

/// The records of one pool: `pool`'s, or, when `pool` is `None`, all of them if the trace
/// holds a single pool. A trace of several pools is refused without a choice: replayed as one
/// fleet, their traffic would be mixed and the prediction would describe no real pool.
pub fn select_pool(
    records: Vec<TraceRecord>,
    pool: Option<&str>,
) -> Result<Vec<TraceRecord>, ReplayError> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for record in &records {
        *counts.entry(record.pool.as_str()).or_default() += 1;
    }
    let listed = || {
        counts
            .iter()
            .map(|(name, n)| format!("{name} ({n} requests)"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match pool {
        Some(name) if counts.contains_key(name) => {
            Ok(records.into_iter().filter(|r| r.pool == name).collect())
        }
        Some(name) => Err(ReplayError::Unusable(format!(
            "the trace has no request of pool `{name}`; its pools are: {}",
            listed()
        ))),
        None if counts.len() > 1 => Err(ReplayError::Unusable(format!(
            "the trace holds {} pools: {}; replayed together their traffic would be mixed into \
             one fleet: choose one with --pool NAME",
            counts.len(),
            listed()
        ))),
        None => Ok(records),
    }
}

/// What the trace itself says happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Observed {
    /// Records (arrivals).
    pub requests: u64,
    /// Records with outcome `ok`.
    pub ok: u64,
    /// Records with outcome `failed`.
    pub failed: u64,
    /// Records with outcome `cancelled`.
    pub cancelled: u64,
    /// Records with outcome `rejected`.
    pub rejected: u64,
    /// First to last arrival, seconds.
    pub duration_s: f64,
    /// Arrivals per second over that span (0 with fewer than two distinct arrival times).
    pub arrival_rate_per_s: f64,
    /// `service_ns` of the `ok` records, in ms: the latency the recording saw, comparable
    /// to the simulator's sojourn of successful requests.
    pub latency_ms: LatencyMs,
    /// Distinct backend addresses, sorted.
    pub backends: Vec<String>,
}

/// The trace's own figures.
pub fn observed(records: &[TraceRecord]) -> Observed {
    let count = |o: TraceOutcome| records.iter().filter(|r| r.outcome == o).count() as u64;
    let mut histogram = latency_histogram();
    let mut sum_ns = 0u128;
    let mut ok = 0u64;
    for r in records.iter().filter(|r| r.outcome == TraceOutcome::Ok) {
        ok += 1;
        sum_ns += u128::from(r.service_ns);
        histogram.saturating_record(r.service_ns.max(1));
    }
    let first = records.iter().map(|r| r.arrival_ns).min().unwrap_or(0);
    let last = records.iter().map(|r| r.arrival_ns).max().unwrap_or(0);
    let span_ns = last - first;
    let q = |quantile: f64| {
        if ok == 0 {
            0.0
        } else {
            histogram.value_at_quantile(quantile) as f64 / 1e6
        }
    };
    let mut backends: Vec<String> = records.iter().filter_map(|r| r.backend.clone()).collect();
    backends.sort();
    backends.dedup();
    Observed {
        requests: records.len() as u64,
        ok,
        failed: count(TraceOutcome::Failed),
        cancelled: count(TraceOutcome::Cancelled),
        rejected: count(TraceOutcome::Rejected),
        duration_s: span_ns as f64 / 1e9,
        arrival_rate_per_s: if span_ns == 0 {
            0.0
        } else {
            (records.len() - 1) as f64 / (span_ns as f64 / 1e9)
        },
        latency_ms: LatencyMs {
            mean: if ok == 0 {
                0.0
            } else {
                sum_ns as f64 / ok as f64 / 1e6
            },
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: if ok == 0 {
                0.0
            } else {
                histogram.max() as f64 / 1e6
            },
        },
        backends,
    }
}

fn latency_histogram() -> Histogram<u64> {
    // Same bounds and precision as the engine's sojourn histogram, so figures compare.
    Histogram::new_with_bounds(1, 2 * crate::distribution::MAX_DURATION_NS, 3)
        .expect("constant histogram bounds are valid")
}

/// How service times were mapped, for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceModel {
    /// Per sim backend: the recorded address it draws from, or `None` for the pooled samples.
    pub sources: Vec<Option<String>>,
}

impl ServiceModel {
    /// `per-backend` or `pooled`.
    pub fn name(&self) -> &'static str {
        if self.sources.iter().all(Option::is_some) {
            "per-backend"
        } else {
            "pooled"
        }
    }
}

/// The simulation a replay runs: its config, and how service times were mapped.
pub fn sim_config(
    records: &[TraceRecord],
    config: &ReplayConfig,
) -> Result<(SimConfig, ServiceModel), ReplayError> {
    if records.is_empty() {
        return Err(ReplayError::Unusable("the trace has no records".into()));
    }
    if records.len() > MAX_TRACE_RECORDS {
        return Err(ReplayError::Unusable(format!(
            "the trace has {} records, more than {MAX_TRACE_RECORDS}",
            records.len()
        )));
    }
    let (lo, hi) = SPEED_FACTOR_RANGE;
    if !(config.speed_factor >= lo && config.speed_factor <= hi) {
        return Err(ReplayError::Config(format!(
            "speed factor must be in [{lo}, {hi}], got {}",
            config.speed_factor
        )));
    }
    if config.concurrency == 0 || config.concurrency > MAX_CONCURRENCY {
        return Err(ReplayError::Config(format!(
            "concurrency must be in 1..={MAX_CONCURRENCY}"
        )));
    }
    // One pass: samples per address (a BTreeMap, so addresses come out sorted) and pooled.
    let mut by_address: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    let mut pooled = Vec::new();
    for r in records {
        let address = r.backend.as_deref();
        let entry = address.map(|a| by_address.entry(a).or_default());
        if r.outcome == TraceOutcome::Ok && r.service_ns > 0 {
            pooled.push(r.service_ns);
            if let Some(samples) = entry {
                samples.push(r.service_ns);
            }
        }
    }
    if pooled.is_empty() {
        return Err(ReplayError::Unusable(
            "the trace has no `ok` record with a positive service_ns to draw service times from"
                .into(),
        ));
    }
    // Sorted, so that the draws depend on the trace's content, not on its line order.
    pooled.sort_unstable();
    for samples in by_address.values_mut() {
        samples.sort_unstable();
    }
    let (addresses, mut own_samples): (Vec<&str>, Vec<Vec<u64>>) = by_address.into_iter().unzip();
    let mut fleet = match (&config.fleet, config.backends) {
        (Some(fleet), _) => fleet.clone(),
        (None, n) => {
            let n = n.unwrap_or(addresses.len().max(1));
            if n == 0 || n > MAX_SIM_BACKENDS {
                return Err(ReplayError::Config(format!(
                    "backends must be in 1..={MAX_SIM_BACKENDS}"
                )));
            }
            vec![BackendSpec::new(ServiceDist::Constant { mean_ns: 1.0 }, config.concurrency); n]
        }
    };
    let one_to_one = fleet.len() == addresses.len();
    let mut sources = Vec::with_capacity(fleet.len());
    let mut pools = Vec::with_capacity(fleet.len());
    for (i, spec) in fleet.iter_mut().enumerate() {
        let own = if one_to_one {
            std::mem::take(&mut own_samples[i])
        } else {
            Vec::new()
        };
        // An address whose requests all failed has no samples: it draws from the pool.
        let (source, pool) = if own.is_empty() {
            (None, pooled.clone())
        } else {
            (Some(addresses[i].to_owned()), own)
        };
        let mean_ns = pool.iter().map(|&s| s as f64).sum::<f64>() / pool.len() as f64;
        // Used for capacity (and so the reported load) only; draws come from `pool`.
        spec.service = ServiceDist::Constant { mean_ns };
        spec.speed *= config.speed_factor;
        sources.push(source);
        pools.push(pool);
    }
    let mut arrivals: Vec<u64> = records.iter().map(|r| r.arrival_ns).collect();
    arrivals.sort_unstable();
    let first = arrivals[0];
    // Virtual time starts at the first arrival.
    for a in &mut arrivals {
        *a -= first;
    }
    let span_ns = arrivals[arrivals.len() - 1];
    let observed_rate = if span_ns == 0 {
        0.0
    } else {
        (arrivals.len() - 1) as f64 / (span_ns as f64 / 1e9)
    };
    let mut sim = SimConfig::new(config.policy, fleet.len(), fleet[0]);
    sim.fleet = fleet;
    sim.requests = arrivals.len() as u64;
    sim.seed = config.seed;
    sim.core = config.core;
    sim.check_invariants = config.check_invariants;
    // Measured offered load: recorded arrival rate ÷ the simulated fleet's capacity.
    sim.load = observed_rate / 1e9 / sim.capacity_per_ns();
    sim.replay = Some(Replayed {
        arrivals_ns: arrivals.into(),
        service_ns: Arc::from(pools),
    });
    sim.validate()?;
    Ok((sim, ServiceModel { sources }))
}

/// Replays `records` with `config` and summarises the run as `balancer-sim run` does
/// (same fields; `service` names the model, `arrivals` is `trace`, `load` the measured load).
pub fn replay(records: &[TraceRecord], config: &ReplayConfig) -> Result<Summary, ReplayError> {
    let (sim, model) = sim_config(records, config)?;
    let stats = run(&sim)?;
    Ok(summarise(&sim, &model, &stats, 0.0))
}

/// The summary of a replayed run, labelled as a replay.
pub fn summarise(
    sim: &SimConfig,
    model: &ServiceModel,
    stats: &crate::engine::RunStats,
    wall_s: f64,
) -> Summary {
    label(Summary::new(sim, stats, wall_s), model)
}

/// Names the service model and the arrivals in a summary of a replayed run.
fn label(mut summary: Summary, model: &ServiceModel) -> Summary {
    summary.service = format!("trace:{}", model.name());
    summary.arrivals = "trace".into();
    for (detail, source) in summary.per_backend_detail.iter_mut().zip(&model.sources) {
        detail.service = format!("trace:{}", source.as_deref().unwrap_or("pooled"));
    }
    summary
}

/// Policies × speed factors over one trace, for `replay --compare`.
#[derive(Clone, Debug)]
pub struct ReplayGrid {
    /// Policies, in report order.
    pub policies: Vec<PolicyKind>,
    /// Speed factors, in report order.
    pub speed_factors: Vec<f64>,
    /// Everything else (policy and speed factor are overridden per cell).
    pub base: ReplayConfig,
}

/// Runs the grid on up to `threads` threads; results are policy-major
/// (index = policy × speed factors + speed factor) and do not depend on `threads`.
pub fn run_replay_grid(
    records: &[TraceRecord],
    grid: &ReplayGrid,
    threads: usize,
    on_done: &(dyn Fn() + Sync),
) -> Result<Vec<Summary>, ReplayError> {
    let mut configs = Vec::new();
    let mut models = Vec::new();
    for &policy in &grid.policies {
        for &speed_factor in &grid.speed_factors {
            let (sim, model) = sim_config(
                records,
                &ReplayConfig {
                    policy,
                    speed_factor,
                    ..grid.base.clone()
                },
            )?;
            configs.push(sim);
            models.push(model);
        }
    }
    let summaries = crate::compare::run_all(&configs, threads, on_done)?;
    Ok(summaries
        .into_iter()
        .zip(&models)
        .map(|(s, model)| label(s, model))
        .collect())
}

/// The comparison as Markdown, with the recorded figures alongside.
pub fn markdown(
    grid: &ReplayGrid,
    results: &[Summary],
    observed: &Observed,
    trace_name: &str,
    command: &str,
) -> String {
    let mut out = String::new();
    let cell = |p: usize, f: usize| &results[p * grid.speed_factors.len() + f];
    let first = &results[0];
    let _ = writeln!(out, "# Replay of {trace_name}\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let o = &observed.latency_ms;
    let _ = writeln!(
        out,
        "Recorded: {} requests over {:.3} s ({:.1} requests/s): {} ok, {} failed, {} cancelled, \
         {} rejected, {} backends. Recorded latency (`service_ns` of `ok` requests): mean {:.3} ms, \
         p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms.\n",
        observed.requests,
        observed.duration_s,
        observed.arrival_rate_per_s,
        observed.ok,
        observed.failed,
        observed.cancelled,
        observed.rejected,
        observed.backends.len(),
        o.mean,
        o.p50,
        o.p99,
        o.p999,
        o.max
    );
    let _ = writeln!(
        out,
        "Simulated: {} backends × {} servers, service times drawn from the trace ({}), seed {}. \
         Latencies are sojourn times (arrival → done) of successful requests, in ms of virtual \
         time; speed factor F divides service times by F.\n",
        grid.base.fleet.as_ref().map_or(first.backends, Vec::len),
        grid.base.concurrency,
        first.service.trim_start_matches("trace:"),
        grid.base.seed
    );
    let reference = grid
        .speed_factors
        .iter()
        .position(|&f| f == 1.0)
        .unwrap_or(0);
    let factor = grid.speed_factors[reference];
    for (p, policy) in grid.policies.iter().enumerate() {
        let s = cell(p, reference);
        let _ = writeln!(
            out,
            "- With this traffic{}, {policy} would have given p99 {:.3} ms (mean {:.3} ms) instead of {:.3} ms (mean {:.3} ms) recorded.",
            if factor == 1.0 {
                String::new()
            } else {
                format!(" and backends {factor}× as fast")
            },
            s.latency_ms.p99,
            s.latency_ms.mean,
            o.p99,
            o.mean
        );
    }
    let _ = writeln!(out);
    for (f, factor) in grid.speed_factors.iter().enumerate() {
        let _ = writeln!(
            out,
            "## Speed factor {factor} (load ρ = {:.3})\n",
            cell(0, f).load
        );
        let _ = writeln!(out, "{}", crate::report::MARKDOWN_HEADER);
        if *factor == 1.0 {
            let _ = writeln!(
                out,
                "| recorded | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
                o.mean,
                o.p50,
                o.p99,
                o.p999,
                o.max,
                observed.ok,
                observed.failed + observed.cancelled,
                observed.rejected
            );
        }
        for (p, policy) in grid.policies.iter().enumerate() {
            let _ = writeln!(out, "{}", cell(p, f).markdown_row(&policy.to_string()));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Plots: [p99_vs_speed.svg](p99_vs_speed.svg), [mean_vs_speed.svg](mean_vs_speed.svg) \
         (the dashed line is the recorded figure, at the recorded speed 1)."
    );
    out
}

/// Writes `report.md`, `p99_vs_speed.svg` and `mean_vs_speed.svg` into `dir`.
pub fn write_report(
    dir: &Path,
    grid: &ReplayGrid,
    results: &[Summary],
    observed: &Observed,
    trace_name: &str,
    command: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let report = dir.join("report.md");
    std::fs::write(
        &report,
        markdown(grid, results, observed, trace_name, command),
    )
    .with_context(|| format!("writing {}", report.display()))?;
    let series = |metric: fn(&Summary) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        grid.policies
            .iter()
            .enumerate()
            .map(|(p, policy)| {
                let points = grid
                    .speed_factors
                    .iter()
                    .enumerate()
                    .map(|(f, &x)| (x, metric(&results[p * grid.speed_factors.len() + f])))
                    .collect();
                (policy.name().to_owned(), points)
            })
            .collect()
    };
    crate::compare::plot_lines(
        &dir.join("p99_vs_speed.svg"),
        "replay: p99 sojourn time vs backend speed",
        "backend speed factor F (service times ÷ F; 1 = as recorded)",
        "p99 sojourn time (ms, log scale)",
        &series(|s| s.latency_ms.p99),
        Some(("recorded p99", observed.latency_ms.p99)),
    )?;
    crate::compare::plot_lines(
        &dir.join("mean_vs_speed.svg"),
        "replay: mean sojourn time vs backend speed",
        "backend speed factor F (service times ÷ F; 1 = as recorded)",
        "mean sojourn time (ms, log scale)",
        &series(|s| s.latency_ms.mean),
        Some(("recorded mean", observed.latency_ms.mean)),
    )?;
    Ok(())
}
