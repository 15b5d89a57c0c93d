//! The `balancer-sim` command line: `run` one simulation, `compare` policies over loads, `replay` a trace.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use balancer_core::PolicyKind;
use balancer_sim::compare::{Grid, run_grid, write_report};
use balancer_sim::{ArrivalSpec, BackendSpec, Scenario, ServiceDist, SimConfig, Summary, run};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Deterministic discrete-event simulator of the balancer's core.
#[derive(Parser)]
#[command(name = "balancer-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one simulation and print its summary.
    Run {
        /// Policy: least-pending, p2c, round-robin, random, peak-ewma.
        #[arg(long, default_value = "least-pending")]
        policy: PolicyKind,
        /// Offered load ρ = arrival rate ÷ fleet capacity (open-loop arrivals only).
        #[arg(long, default_value_t = 0.9)]
        load: f64,
        #[command(flatten)]
        common: Common,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run every policy × load and write DIR/report.md, DIR/p99_vs_load.svg, DIR/mean_vs_load.svg.
    Compare {
        /// Comma-separated policies.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "least-pending,p2c,round-robin,random,peak-ewma"
        )]
        policies: Vec<PolicyKind>,
        /// Comma-separated loads.
        #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9,0.95")]
        loads: Vec<f64>,
        #[command(flatten)]
        common: Common,
        /// Output directory.
        #[arg(long, default_value = "sim-report")]
        out: PathBuf,
        /// Worker threads (default: the machine's cores). The output does not depend on it.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Replay a recorded trace (balancer_core::trace format) with a policy, or --compare several.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// Trace file written by the proxy (`# balancer-trace v1` header, tab-separated).
    #[arg(long)]
    trace: PathBuf,
    /// Policy: least-pending, p2c, round-robin, random, peak-ewma.
    #[arg(long, default_value = "least-pending")]
    policy: PolicyKind,
    /// Replay only this pool's requests (needed when the trace holds several pools).
    #[arg(long)]
    pool: Option<String>,
    /// Simulated backends (default: one per backend address in the trace).
    #[arg(long, conflicts_with = "fleet")]
    backends: Option<usize>,
    /// Scenario file whose [[backend]] fleet (count, concurrency, speed, weight) and [core]
    /// options are used; service times still come from the trace; faults are not allowed.
    #[arg(long)]
    fleet: Option<PathBuf>,
    /// Servers per simulated backend (without --fleet); give real backends' parallelism.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Backends F times as fast: service times are divided by F.
    #[arg(long, default_value_t = 1.0)]
    speed_factor: f64,
    /// Seed of the service-time draws and the policy's RNG.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output format (single replay).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Check the core's invariants after every event (slower).
    #[arg(long)]
    check_invariants: bool,
    /// Report wall time as zero, so that the whole output is deterministic.
    #[arg(long)]
    zero_wall: bool,
    /// Compare these policies instead (comma-separated) and write a report to --out.
    #[arg(long, value_delimiter = ',')]
    compare: Option<Vec<PolicyKind>>,
    /// With --compare: speed factors to try (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,1.25,1.5,2")]
    speed_factors: Vec<f64>,
    /// With --compare: output directory.
    #[arg(long, default_value = "replay-report")]
    out: PathBuf,
    /// With --compare: worker threads (default: the machine's cores). The output does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct Common {
    /// Number of identical backends (ignored when the scenario file has a [[backend]] fleet).
    #[arg(long, default_value_t = 10)]
    backends: usize,
    /// Requests to simulate.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Seed of every random stream; the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Service time: const:MEAN | exp:MEAN | lognormal:MEAN:SIGMA | pareto:MEAN:ALPHA | bimodal:FAST:SLOW:P_SLOW.
    #[arg(long, default_value = "exp:1ms")]
    service: ServiceDist,
    /// Requests each backend serves in parallel (the rest queue FIFO).
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Arrivals: poisson | bursty[:ON:OFF] | closed:N[:THINK].
    #[arg(long, default_value = "poisson")]
    arrivals: ArrivalSpec,
    /// Scenario file (TOML): a fleet, [core] options and/or a fault schedule.
    #[arg(long)]
    faults: Option<PathBuf>,
    /// Check the core's invariants after every event (slower).
    #[arg(long)]
    check_invariants: bool,
    /// The core's bound on requests in flight (beyond it, requests are rejected).
    #[arg(long, default_value_t = balancer_core::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: u32,
    /// Percent of requests whose method may not be repeated (POST, PATCH): the core retries
    /// them only with retry_non_idempotent.
    #[arg(long, default_value_t = 0)]
    non_idempotent_percent: u8,
    /// Report wall time as zero, so that the whole output is deterministic.
    #[arg(long)]
    zero_wall: bool,
    /// Turn on the core's outlier ejection with its defaults (5 failures in a row eject for 30 s).
    #[arg(long)]
    outlier: bool,
    /// The core's per-backend cap on requests in flight (circuit breaking).
    #[arg(long)]
    max_pending_per_backend: Option<u32>,
    /// Turn on the core's retry decisions with this many retries (default budget and backoff).
    #[arg(long)]
    retries: Option<u32>,
    /// Probe every backend this often (e.g. 100ms) and feed the results to the core.
    #[arg(long, value_parser = parse_interval)]
    health_interval: Option<u64>,
    /// Turn on the core's slow start with this ramp window (e.g. 5s), from 10% of full share.
    #[arg(long, value_parser = parse_interval)]
    slow_start: Option<u64>,
    /// The core's panic threshold, in percent of backends able to take work.
    #[arg(long)]
    panic_threshold_percent: Option<u8>,
    /// Request keys for consistent-hash: none, uniform:N or zipf:S:N (e.g. zipf:1.1:10000).
    #[arg(long, default_value = "none")]
    keys: balancer_sim::KeySpec,
    /// consistent-hash's load bound: a factor of at least 1.0 (default 1.25) or "unbounded".
    #[arg(long, value_parser = parse_hash_bound)]
    hash_load_factor: Option<balancer_sim::options::HashBound>,
}

fn parse_hash_bound(text: &str) -> Result<balancer_sim::options::HashBound, String> {
    use balancer_sim::options::HashBound;
    if text == "unbounded" {
        return Ok(HashBound::Unbounded);
    }
    match text.parse::<f64>() {
        Ok(f) if (1.0..=100.0).contains(&f) => Ok(HashBound::Factor(f)),
        _ => Err(format!(
            "{text:?}: write a number from 1.0 to 100, or unbounded"
        )),
    }
}

fn parse_interval(text: &str) -> Result<u64, String> {
    balancer_sim::distribution::parse_duration_ns(text).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

impl Common {
    fn config(&self, policy: PolicyKind, load: f64) -> anyhow::Result<SimConfig> {
        let defaults = BackendSpec::new(self.service, self.concurrency);
        balancer_sim::faults::check_spec(&defaults)
            .map_err(|e| anyhow::anyhow!("--concurrency: {e}"))?;
        if self.backends == 0 || self.backends > balancer_sim::backends::MAX_SIM_BACKENDS {
            anyhow::bail!(
                "--backends must be in 1..={}",
                balancer_sim::backends::MAX_SIM_BACKENDS
            );
        }
        let mut config = SimConfig::new(policy, self.backends, defaults);
        config.load = load;
        config.requests = self.requests;
        config.seed = self.seed;
        config.arrivals = self.arrivals;
        config.check_invariants = self.check_invariants;
        config.max_in_flight = self.max_in_flight;
        config.non_idempotent_percent = self.non_idempotent_percent;
        config.keys = self.keys;
        if let Some(path) = &self.faults {
            let scenario = Scenario::load(path, defaults)?;
            if let Some(fleet) = scenario.fleet {
                config.fleet = fleet;
            }
            config.faults = scenario.faults;
            config.core = scenario.core;
            // Check the schedule against the fleet now, so the error names the file.
            balancer_sim::faults::compile(
                &config.faults,
                config.fleet.len(),
                &path.display().to_string(),
            )?;
        }
        if self.outlier {
            config.core.outlier = Some(balancer_core::OutlierConfig::default());
        }
        if let Some(cap) = self.max_pending_per_backend {
            config.core.max_pending_per_backend = Some(cap);
        }
        if let Some(retries) = self.retries {
            config.core.retry = Some(balancer_core::RetryConfig {
                max_retries: retries,
                ..config.core.retry.unwrap_or_default()
            });
        }
        if let Some(window_ns) = self.slow_start {
            config.core.slow_start = Some(balancer_core::SlowStartConfig {
                window: std::time::Duration::from_nanos(window_ns),
                ..config.core.slow_start.unwrap_or_default()
            });
        }
        if let Some(percent) = self.panic_threshold_percent {
            config.core.panic_threshold_percent = Some(percent);
        }
        if let Some(bound) = self.hash_load_factor {
            config.core.hash_bound = bound;
        }
        if let Some(interval_ns) = self.health_interval {
            let defaults = balancer_core::HealthCheckConfig::default();
            config.core.health = Some(balancer_sim::HealthProbes {
                interval_ns,
                rise: defaults.rise,
                fall: defaults.fall,
            });
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line each, no backtrace: these are user errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            policy,
            load,
            common,
            format,
        } => {
            let config = common.config(policy, load)?;
            let started = Instant::now();
            let stats = run(&config).with_context(|| {
                format!(
                    "simulation failed (seed {}); replay with: cargo run -p balancer-sim -- {}",
                    config.seed,
                    replay_args()
                )
            })?;
            let wall_s = if common.zero_wall {
                0.0
            } else {
                started.elapsed().as_secs_f64()
            };
            let summary = Summary::new(&config, &stats, wall_s);
            match format {
                Format::Table => print!("{}", summary.to_table()),
                Format::Json => println!("{}", summary.to_json()),
            }
        }
        Command::Compare {
            policies,
            loads,
            common,
            out,
            threads,
        } => {
            if loads
                .iter()
                .any(|&l| !(l > 0.0 && l <= balancer_sim::engine::MAX_LOAD))
            {
                anyhow::bail!(
                    "--loads must each be in (0, {}]",
                    balancer_sim::engine::MAX_LOAD
                );
            }
            let base = common.config(PolicyKind::LeastPending, loads[0])?;
            let grid = Grid {
                policies,
                loads,
                base,
            };
            let cells = (grid.policies.len() * grid.loads.len()) as u64;
            let bar = indicatif::ProgressBar::new(cells);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} runs",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let results = run_grid(&grid, threads, &|| bar.inc(1))?;
            bar.finish_and_clear();
            write_report(&out, &grid, &results, &command_line())?;
            print!(
                "{}",
                std::fs::read_to_string(out.join("report.md")).unwrap_or_default()
            );
            eprintln!("wrote {}", out.join("report.md").display());
        }
        Command::Replay(args) => replay(args)?,
    }
    Ok(())
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use balancer_sim::replay::{
        ReplayConfig, ReplayGrid, load_trace, observed, run_replay_grid, select_pool, sim_config,
        summarise, write_report,
    };
    let records = select_pool(load_trace(&args.trace)?, args.pool.as_deref())
        .with_context(|| args.trace.display().to_string())?;
    let mut config = ReplayConfig::new(args.policy);
    config.backends = args.backends;
    config.concurrency = args.concurrency;
    config.speed_factor = args.speed_factor;
    config.seed = args.seed;
    config.check_invariants = args.check_invariants;
    if let Some(path) = &args.fleet {
        let defaults = BackendSpec::new(ServiceDist::Constant { mean_ns: 1e6 }, args.concurrency);
        let scenario = Scenario::load(path, defaults)?;
        if !scenario.faults.is_empty() {
            anyhow::bail!(
                "{}: a replay fleet file may not have [[fault]]s",
                path.display()
            );
        }
        config.fleet = Some(scenario.fleet.unwrap_or_else(|| vec![defaults]));
        config.core = scenario.core;
    }
    let Some(policies) = args.compare else {
        let (sim, model) = sim_config(&records, &config)?;
        let started = Instant::now();
        let stats = run(&sim).with_context(|| {
            format!(
                "replay failed (seed {}); replay with: cargo run -p balancer-sim -- {}",
                sim.seed,
                replay_args()
            )
        })?;
        let wall_s = if args.zero_wall {
            0.0
        } else {
            started.elapsed().as_secs_f64()
        };
        let summary = summarise(&sim, &model, &stats, wall_s);
        match args.format {
            Format::Table => print!("{}", summary.to_table()),
            Format::Json => println!("{}", summary.to_json()),
        }
        return Ok(());
    };
    if policies.is_empty() || args.speed_factors.is_empty() {
        anyhow::bail!("--compare and --speed-factors need at least one value each");
    }
    let grid = ReplayGrid {
        policies,
        speed_factors: args.speed_factors,
        base: config,
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let results = run_replay_grid(&records, &grid, threads, &|| {})?;
    let name = args.trace.file_name().map_or_else(
        || args.trace.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    write_report(
        &args.out,
        &grid,
        &results,
        &observed(&records),
        &name,
        &command_line(),
    )?;
    print!(
        "{}",
        std::fs::read_to_string(args.out.join("report.md")).unwrap_or_default()
    );
    eprintln!("wrote {}", args.out.join("report.md").display());
    Ok(())
}

fn command_line() -> String {
    format!("balancer-sim {}", replay_args())
}

fn replay_args() -> String {
    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
}
