//! `compare-proxies`: measures the balancer side by side with HAProxy and nginx on this machine,
//! in one run, and writes target/load-report/{report.md,results.json,*.svg}.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use balancer_load::loadgen::{self, LoadGen, Oha};
use balancer_load::procs::{self, Child};
use balancer_load::report::{self, ClosedSample, Meta, OpenSample, Row, Target, TargetResults};
use balancer_load::{configs, conns, setup};
use clap::Parser;

/// Open files wanted for the harness and, inherited, the proxies: 10k idle client connections
/// plus, for a proxy, one backend connection per in-flight request, with room to spare.
const NOFILE_TARGET: u64 = 65_536;

/// How long the slow backends of the in-flight measurement hold each response: longer than the
/// connect + settle + measure steps (a few seconds) so every request is still in flight.
const SLOW_BACKEND_LATENCY_MS: u64 = 15_000;

/// Longest wait for RSS to settle after opening or loading connections.
const RSS_SETTLE_MAX: Duration = Duration::from_secs(4);

/// An open-loop run below this fraction of the target rate is flagged: its latencies are those
/// of a lower load than asked for.
const OPEN_RATE_SHORTFALL: f64 = 0.95;

/// Longest wait for a proxy to accept the connections it will (descriptor count stable).
const FDS_SETTLE_MAX: Duration = Duration::from_secs(15);

/// The balancer beside HAProxy and nginx: closed loop (wrk), open loop (oha), CPU per request and
/// memory, with interleaved repeats and medians. Loopback only; every run is bounded.
#[derive(Parser, Debug)]
#[command(name = "compare-proxies", version)]
struct Cli {
    /// Measured seconds of each closed- and open-loop run [default: 10; 3 with --quick].
    #[arg(long)]
    duration_s: Option<u64>,
    /// Unmeasured warm-up seconds before each closed-loop run [default: 2; 1 with --quick].
    #[arg(long)]
    warmup_s: Option<u64>,
    /// Interleaved repeats of every measurement [default: 3; 1 with --quick].
    #[arg(long)]
    repeats: Option<usize>,
    /// Client connections of wrk and oha.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Open-loop request rate, requests/s.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Idle client connections for the memory measurement [default: 10000; 2000 with --quick].
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Requests held in flight (slow backends) for the per-request memory [default: 1000; 200 with --quick].
    #[arg(long)]
    in_flight: Option<usize>,
    /// Short runs for development: 1 repeat of 3 s, fewer connections in the memory phases.
    #[arg(long)]
    quick: bool,
    /// Which targets to run, in interleaving order (balancer-baseline joins after balancer when
    /// --baseline is given and it is not listed).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Target::ALL)]
    targets: Vec<Target>,
    /// First port of the range used on 127.0.0.1 (base+1 .. base+44).
    #[arg(long, default_value_t = 18_100)]
    base_port: u16,
    /// CPU list the proxies are pinned to (taskset -c).
    #[arg(long, default_value = "0")]
    proxy_cpus: String,
    /// CPU list the load generator and backends are pinned to.
    #[arg(long, default_value = "1")]
    load_cpus: String,
    /// Use this balancer binary instead of building it with cargo.
    #[arg(long)]
    balancer_bin: Option<PathBuf>,
    /// A second balancer binary (e.g. built from an older commit), measured as
    /// `balancer-baseline` with the same config, pinning and interleaved repeats.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Never install anything (apt-get, cargo install); fail or skip instead.
    #[arg(long)]
    no_install: bool,
    /// Longest `cargo install oha --locked` may take, seconds.
    #[arg(long, default_value_t = 1200)]
    oha_install_timeout_s: u64,
    /// Skip the open-loop (oha) runs.
    #[arg(long)]
    skip_open_loop: bool,
    /// Skip the memory phases (idle connections, in-flight requests).
    #[arg(long)]
    skip_memory: bool,
    /// Output directory [default: WORKSPACE/target/load-report].
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

/// Resolved settings.
struct Settings {
    duration: Duration,
    warmup: Duration,
    repeats: usize,
    idle_connections: usize,
    in_flight: usize,
}

impl Cli {
    /// The targets in interleaving order: the baseline right after the balancer, so that the two
    /// binaries run closest together in time.
    fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let mut targets = self.targets.clone();
        let listed = targets.contains(&Target::Baseline);
        match (&self.baseline, listed) {
            (None, true) => bail!("--targets names balancer-baseline but --baseline is not given"),
            (Some(_), false) => {
                let at = targets
                    .iter()
                    .position(|&t| t == Target::Balancer)
                    .map_or(targets.len(), |i| i + 1);
                targets.insert(at, Target::Baseline);
            }
            _ => {}
        }
        Ok(targets)
    }

    fn settings(&self) -> Settings {
        let (d, w, r, i, f) = if self.quick {
            (3, 1, 1, 2_000, 200)
        } else {
            (10, 2, 3, 10_000, 1_000)
        };
        Settings {
            duration: Duration::from_secs(self.duration_s.unwrap_or(d).max(1)),
            warmup: Duration::from_secs(self.warmup_s.unwrap_or(w)),
            repeats: self.repeats.unwrap_or(r).max(1),
            idle_connections: self.idle_connections.unwrap_or(i),
            in_flight: self.in_flight.unwrap_or(f),
        }
    }
}

/// Ports, all on 127.0.0.1, derived from --base-port.
struct Ports {
    backends: [u16; 4],
    slow_backends: [u16; 4],
    base: u16,
}

/// Phases use separate ports so a restart never meets the previous instance's TIME_WAITs.
#[derive(Clone, Copy)]
enum Phase {
    Load,
    IdleMemory,
    InFlight,
}

impl Phase {
    fn tag(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::IdleMemory => "idle",
            Phase::InFlight => "inflight",
        }
    }
}

impl Ports {
    fn new(base: u16) -> anyhow::Result<Ports> {
        if base.checked_add(50).is_none() {
            bail!("--base-port {base} is too high: the harness uses base+1 .. base+44");
        }
        Ok(Ports {
            backends: [base + 1, base + 2, base + 3, base + 4],
            slow_backends: [base + 11, base + 12, base + 13, base + 14],
            base,
        })
    }

    fn proxy(&self, target: Target, phase: Phase) -> u16 {
        let phase_offset = match phase {
            Phase::Load => 20,
            Phase::IdleMemory => 30,
            Phase::InFlight => 40,
        };
        let target_offset = match target {
            Target::Direct => return self.backends[0],
            Target::Balancer => 1,
            Target::Haproxy => 2,
            Target::Nginx => 3,
            Target::Baseline => 4,
        };
        self.base + phase_offset + target_offset
    }

    fn all(&self) -> Vec<u16> {
        let mut all: Vec<u16> = self.backends.to_vec();
        all.extend(self.slow_backends);
        for phase in [Phase::Load, Phase::IdleMemory, Phase::InFlight] {
            for target in [
                Target::Balancer,
                Target::Haproxy,
                Target::Nginx,
                Target::Baseline,
            ] {
                all.push(self.proxy(target, phase));
            }
        }
        all
    }
}

/// What every start needs.
struct Ctx {
    taskset: PathBuf,
    haproxy: PathBuf,
    nginx: PathBuf,
    balancer: Result<PathBuf, String>,
    baseline: Option<PathBuf>,
    haproxy_maxconn: usize,
    nofile: u64,
    proxy_cpus: String,
    load_cpus: String,
    configs_dir: PathBuf,
    logs_dir: PathBuf,
    run_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = procs::install_signal_handler() {
        eprintln!("compare-proxies: warning: {err:#}; Ctrl-C may leave children running");
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The signal thread is stopping the children and will exit with 130; let it.
        Err(_) if procs::stopping() => {
            thread::sleep(Duration::from_secs(5));
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("compare-proxies: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn shell_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Raises the open-files limit of this process (children inherit it) with util-linux prlimit,
/// which needs no unsafe code here: to [`NOFILE_TARGET`] if allowed, else the soft limit up to the
/// hard one. Returns the soft limit in force afterwards.
fn raise_nofile() -> u64 {
    let pid = std::process::id().to_string();
    let prlimit = |soft: u64, hard: u64| {
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:{hard}")])
            .stderr(std::process::Stdio::null())
            .status();
    };
    match procs::nofile_limits() {
        Some((soft, _)) if soft >= NOFILE_TARGET => return soft,
        Some((_, hard)) if hard >= NOFILE_TARGET => prlimit(NOFILE_TARGET, hard),
        Some((_, hard)) => {
            prlimit(NOFILE_TARGET, NOFILE_TARGET);
            if procs::nofile_limits().is_some_and(|(soft, _)| soft < NOFILE_TARGET) {
                prlimit(hard, hard);
            }
        }
        None => {}
    }
    procs::nofile_limits().map_or(0, |(soft, _)| soft)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let settings = cli.settings();
    let targets = cli.targets()?;
    // Asked for by name, so a wrong path stops the run rather than leaving the comparison out.
    if let Some(path) = &cli.baseline {
        if !path.is_file() {
            bail!("--baseline {} does not exist", path.display());
        }
    }
    let started_utc = shell_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let ws = setup::workspace()?;
    // Relative to the workspace root, as documented, and absolute from here on: nginx and
    // HAProxy resolve their paths against their own prefix, not our working directory.
    let out = match &cli.out_dir {
        Some(dir) => ws.root.join(dir),
        None => ws.root.join("target").join("load-report"),
    };
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let leftovers = procs::adopt_child_record(&out.join("children.txt"));
    if leftovers > 0 {
        eprintln!("stopped {leftovers} process group(s) left behind by a previous, killed run");
        thread::sleep(Duration::from_millis(500));
    }
    for sub in ["configs", "logs", "raw", "run"] {
        let dir = out.join(sub);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let ports = Ports::new(cli.base_port)?;
    procs::check_ports_free(&ports.all())?;
    let mut warnings = Vec::new();

    let nofile = raise_nofile();
    let needed = settings.idle_connections.max(settings.in_flight) as u64 * 2 + 1000;
    if nofile < needed {
        warnings.push(format!(
            "open-files limit is {nofile} and cannot be raised here (wanted {NOFILE_TARGET}); \
             raise the hard limit (e.g. `ulimit -Hn 65536` as root, docker --ulimit nofile=65536)"
        ));
    }
    let haproxy_maxconn = configs::haproxy_maxconn(nofile);
    if haproxy_maxconn < settings.idle_connections {
        warnings.push(format!(
            "HAProxy's maxconn is capped at {haproxy_maxconn} by the open-files limit {nofile} (it \
             reserves 2 descriptors per connection and refuses to start otherwise), so it accepts \
             fewer than the {} idle connections; its per-connection RSS is still measured",
            settings.idle_connections
        ));
    }

    let tools = setup::ensure_debian_tools(!cli.no_install)?;
    let tool = |name: &str| -> anyhow::Result<PathBuf> {
        tools
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| anyhow!("{name} not found"))
    };

    let oha = if cli.skip_open_loop {
        warnings.push("open loop skipped (--skip-open-loop)".into());
        None
    } else {
        match setup::ensure_oha(
            !cli.no_install,
            Duration::from_secs(cli.oha_install_timeout_s),
            &out.join("logs"),
        )
        .and_then(Oha::detect)
        {
            Ok(oha) => {
                if !oha.latency_correction {
                    warnings.push(
                        "this oha has no --latency-correction: open-loop latencies are not \
                         corrected for coordinated omission"
                            .into(),
                    );
                }
                Some(oha)
            }
            Err(err) => {
                let message = format!("open loop MISSING: {err:#}");
                eprintln!("compare-proxies: {message}");
                warnings.push(message);
                None
            }
        }
    };

    let balancer = match &cli.balancer_bin {
        Some(path) if path.is_file() => Ok(path.clone()),
        Some(path) => Err(format!("--balancer-bin {} does not exist", path.display())),
        None => setup::build_balancer(&ws).map_err(|e| format!("{e:#}")),
    };
    if let Err(why) = &balancer {
        eprintln!("compare-proxies: the balancer cannot be measured: {why}");
    }

    let ctx = Ctx {
        taskset: tool("taskset")?,
        haproxy: tool("haproxy")?,
        nginx: tool("nginx")?,
        balancer,
        baseline: cli.baseline.clone(),
        haproxy_maxconn,
        nofile,
        proxy_cpus: cli.proxy_cpus.clone(),
        load_cpus: cli.load_cpus.clone(),
        configs_dir: out.join("configs"),
        logs_dir: out.join("logs"),
        run_dir: out.join("run"),
    };
    let load = LoadGen {
        taskset: ctx.taskset.clone(),
        cpus: cli.load_cpus.clone(),
        wrk: tool("wrk")?,
        oha,
        connections: cli.connections,
        raw_dir: out.join("raw"),
    };

    let mut versions = vec![
        (
            "haproxy".to_owned(),
            setup::version_line(&ctx.haproxy, &["-v"]),
        ),
        ("nginx".to_owned(), setup::version_line(&ctx.nginx, &["-v"])),
        ("wrk".to_owned(), setup::version_line(&load.wrk, &["-v"])),
    ];
    if let Some(oha) = &load.oha {
        versions.push(("oha".into(), setup::version_line(&oha.path, &["--version"])));
    }
    if let Ok(bin) = &ctx.balancer {
        versions.push(("balancer".into(), setup::version_line(bin, &["--version"])));
    }
    if let Some(bin) = &ctx.baseline {
        versions.push((
            Target::Baseline.name().into(),
            format!(
                "{} ({})",
                setup::version_line(bin, &["--version"]),
                bin.display()
            ),
        ));
    }

    let mut results: Vec<TargetResults> = targets.iter().map(|&t| TargetResults::new(t)).collect();
    if let Err(why) = &ctx.balancer {
        for r in results.iter_mut().filter(|r| r.target == Target::Balancer) {
            r.failure = Some(format!("not measured: {why}"));
        }
    }

    // Backends first: a backend that does not start is fatal (nothing can be measured).
    eprintln!("starting 4 nginx backends on {:?}", ports.backends);
    let mut backends = Vec::new();
    for (i, &port) in ports.backends.iter().enumerate() {
        backends.push(start_backend(&ctx, i + 1, port)?);
    }
    loadgen::smoke_get(ports.backends[0]).context("the first backend does not answer")?;

    if !cli.skip_memory {
        idle_memory_phase(&ctx, &ports, &settings, &mut results);
        in_flight_phase(&ctx, &ports, &settings, &mut results, &mut warnings);
    }

    let uptime_before = shell_line("uptime", &[]);
    load_phase(&ctx, &ports, &settings, &load, cli.rate, &mut results);
    let uptime_after = shell_line("uptime", &[]);
    drop(backends);

    if procs::stopping() {
        bail!("interrupted: no report written");
    }
    let rows: Vec<Row> = results.iter().map(Row::from_results).collect();
    let meta = Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_utc,
        finished_utc: shell_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        uptime_before,
        uptime_after,
        git_rev: shell_line(
            "git",
            &[
                "-C",
                &ws.root.display().to_string(),
                "describe",
                "--always",
                "--dirty",
            ],
        ),
        versions,
        settings: vec![
            (
                "closed loop".into(),
                format!(
                    "wrk -t1 -c{} --latency, {} s warm-up then {} s measured",
                    cli.connections,
                    settings.warmup.as_secs(),
                    settings.duration.as_secs()
                ),
            ),
            (
                "open loop".into(),
                match &load.oha {
                    Some(o) => format!(
                        "oha -q {} -c {} -z {}s{}",
                        cli.rate,
                        cli.connections,
                        settings.duration.as_secs(),
                        if o.latency_correction {
                            " --latency-correction"
                        } else {
                            ""
                        }
                    ),
                    None => "missing".into(),
                },
            ),
            (
                "repeats".into(),
                format!(
                    "{} (interleaved: {})",
                    settings.repeats,
                    targets
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (
                "pinning".into(),
                format!(
                    "proxies on CPU {}, wrk/oha and backends on CPU {} (taskset -c)",
                    cli.proxy_cpus, cli.load_cpus
                ),
            ),
            (
                "backends".into(),
                format!(
                    "4 nginx (1 worker each) on 127.0.0.1:{}-{}, {}-byte body",
                    ports.backends[0],
                    ports.backends[3],
                    configs::BACKEND_BODY.len()
                ),
            ),
            (
                "memory".into(),
                format!(
                    "{} idle client connections; {} requests in flight to backends that answer after {} ms",
                    settings.idle_connections, settings.in_flight, SLOW_BACKEND_LATENCY_MS
                ),
            ),
            (
                "machine".into(),
                format!(
                    "{} CPUs, open-files limit {nofile}",
                    shell_line("nproc", &[])
                ),
            ),
        ],
        warnings,
    };
    let md = report::markdown(&meta, &rows);
    fs::write(out.join("report.md"), &md).context("cannot write report.md")?;
    report::write_json(&out.join("results.json"), &rows)?;
    fs::write(
        out.join("meta.json"),
        serde_json::to_string_pretty(&meta)? + "\n",
    )
    .context("cannot write meta.json")?;
    if let Err(err) = report::write_charts(&out, &rows) {
        eprintln!("compare-proxies: warning: charts not written: {err:#}");
    }
    println!("{md}");
    eprintln!(
        "wrote {}/{{report.md,results.json,meta.json,throughput.svg,latency.svg,memory.svg}}",
        out.display()
    );
    Ok(())
}

fn pinned(ctx: &Ctx, cpus: &str, program: &Path) -> Command {
    let mut command = Command::new(&ctx.taskset);
    command.args(["-c", cpus]).arg(program);
    command
}

fn start_backend(ctx: &Ctx, id: usize, port: u16) -> anyhow::Result<Child> {
    let prefix = ctx.run_dir.join(format!("backend{id}"));
    fs::create_dir_all(&prefix)?;
    let conf = ctx.configs_dir.join(format!("backend{id}-nginx.conf"));
    fs::write(&conf, configs::nginx_backend(&prefix, port, ctx.nofile))?;
    let mut child = Child::spawn(
        &format!("backend{id}"),
        pinned(ctx, &ctx.load_cpus, &ctx.nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"]),
        &ctx.logs_dir,
    )?;
    child
        .wait_listening(SocketAddr::from(([127, 0, 0, 1], port)))
        .with_context(|| format!("backend {id} (nginx) did not start"))?;
    Ok(child)
}

fn start_slow_backend(ctx: &Ctx, balancer: &Path, id: usize, port: u16) -> anyhow::Result<Child> {
    let mut child = Child::spawn(
        &format!("slow-backend{id}"),
        pinned(ctx, &ctx.load_cpus, balancer)
            .arg("demo-backend")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--id", &id.to_string()])
            .args(["--latency-ms", &SLOW_BACKEND_LATENCY_MS.to_string()])
            .env("RUST_LOG", "warn"),
        &ctx.logs_dir,
    )?;
    child.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)))?;
    Ok(child)
}

/// Runs `program args`, failing with its output if it exits non-zero (config checks).
fn check_command(what: &str, command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run the {what} config check"))?;
    if !output.status.success() {
        bail!(
            "{what} config check failed: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the config of `target` for `phase`, checks it, starts the proxy pinned, and waits until
/// it listens (and, with fast backends, answers 200).
fn start_proxy(
    ctx: &Ctx,
    target: Target,
    phase: Phase,
    port: u16,
    backends: &[u16],
) -> anyhow::Result<Child> {
    let name = format!("{}-{}", phase.tag(), target.name());
    let mut command = match target {
        Target::Direct => bail!("direct has no proxy"),
        Target::Balancer | Target::Baseline => {
            let bin = match target {
                Target::Baseline => ctx
                    .baseline
                    .as_ref()
                    .ok_or_else(|| anyhow!("no --baseline given"))?,
                _ => ctx.balancer.as_ref().map_err(|why| anyhow!("{why}"))?,
            };
            let conf = ctx.configs_dir.join(format!("{name}.toml"));
            fs::write(&conf, configs::balancer(port, backends))?;
            check_command(target.name(), Command::new(bin).arg("check").arg(&conf))?;
            let mut command = pinned(ctx, &ctx.proxy_cpus, bin);
            // Diagnostics at warn only: nothing per request is logged.
            command.arg("--config").arg(&conf).env("RUST_LOG", "warn");
            command
        }
        Target::Haproxy => {
            let conf = ctx.configs_dir.join(format!("{name}.cfg"));
            fs::write(&conf, configs::haproxy(port, backends, ctx.haproxy_maxconn))?;
            check_command(
                "haproxy",
                Command::new(&ctx.haproxy)
                    .args(["-q", "-c", "-f"])
                    .arg(&conf),
            )?;
            let mut command = pinned(ctx, &ctx.proxy_cpus, &ctx.haproxy);
            command.arg("-db").arg("-f").arg(&conf);
            command
        }
        Target::Nginx => {
            let prefix = ctx.run_dir.join(&name);
            fs::create_dir_all(&prefix)?;
            let conf = ctx.configs_dir.join(format!("{name}.conf"));
            fs::write(
                &conf,
                configs::nginx_proxy(&prefix, port, backends, ctx.nofile),
            )?;
            check_command(
                "nginx",
                Command::new(&ctx.nginx)
                    .args(["-q", "-t", "-p"])
                    .arg(&prefix)
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "stderr"]),
            )?;
            let mut command = pinned(ctx, &ctx.proxy_cpus, &ctx.nginx);
            command
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf)
                .args(["-e", "stderr"]);
            command
        }
    };
    let mut child = Child::spawn(&name, &mut command, &ctx.logs_dir)?;
    child.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)))?;
    if matches!(phase, Phase::Load | Phase::IdleMemory) {
        loadgen::smoke_get(port).with_context(|| format!("{name} started but does not proxy"))?;
    }
    Ok(child)
}

fn proxies(results: &mut [TargetResults]) -> impl Iterator<Item = &mut TargetResults> {
    results
        .iter_mut()
        .filter(|r| r.target != Target::Direct && r.failure.is_none())
}

/// RSS idle, then with N idle client connections open.
fn idle_memory_phase(ctx: &Ctx, ports: &Ports, settings: &Settings, results: &mut [TargetResults]) {
    for r in proxies(results) {
        let port = ports.proxy(r.target, Phase::IdleMemory);
        eprintln!(
            "memory: {} idle, then with {} idle connections",
            r.target.name(),
            settings.idle_connections
        );
        let mut child = match start_proxy(ctx, r.target, Phase::IdleMemory, port, &ports.backends) {
            Ok(child) => child,
            Err(err) => {
                r.failure = Some(format!("failed to start: {err:#}"));
                eprintln!("compare-proxies: {}: {err:#}", r.target.name());
                continue;
            }
        };
        let pid = child.pid();
        r.rss_idle_kib = Some(procs::settled_rss_kib(pid, RSS_SETTLE_MAX));
        if settings.idle_connections == 0 {
            continue;
        }
        let fds_before = procs::group_fds(pid);
        match conns::open(
            SocketAddr::from(([127, 0, 0, 1], port)),
            settings.idle_connections,
        ) {
            Ok(held) => {
                // Accepted = the proxy's new descriptors; the rest wait in the kernel backlog.
                let expected = fds_before + held.streams.len();
                let fds = procs::settled_fds(pid, expected, FDS_SETTLE_MAX);
                let accepted = fds.saturating_sub(fds_before);
                let rss = procs::settled_rss_kib(pid, RSS_SETTLE_MAX);
                let open = held.still_open();
                if held.failed > 0 || open < settings.idle_connections {
                    r.notes.push(format!(
                        "idle connections: {} opened, {} failed, {} still open at RSS time",
                        held.streams.len(),
                        held.failed,
                        open
                    ));
                }
                eprintln!(
                    "  {}: rss idle {} KiB, with {open} conns open ({accepted} accepted) {rss} KiB",
                    r.target.name(),
                    r.rss_idle_kib.unwrap_or(0),
                );
                r.rss_idle_conns_kib = Some(rss);
                r.idle_conns = Some((open, accepted));
            }
            Err(err) => r.notes.push(format!("idle connections: {err:#}")),
        }
        if child.exited().is_some() {
            r.notes.push(format!(
                "exited during the idle-connection phase: {}",
                child.stderr_tail()
            ));
        }
        child.stop();
    }
}

/// RSS with N client connections idle, then with one request each in flight to slow backends.
fn in_flight_phase(
    ctx: &Ctx,
    ports: &Ports,
    settings: &Settings,
    results: &mut [TargetResults],
    warnings: &mut Vec<String>,
) {
    if settings.in_flight == 0 {
        return;
    }
    let Ok(balancer) = &ctx.balancer else {
        warnings.push(
            "per-in-flight memory not measured: its slow backends are `balancer demo-backend`, \
             which is not available"
                .into(),
        );
        return;
    };
    let mut slow = Vec::new();
    for (i, &port) in ports.slow_backends.iter().enumerate() {
        match start_slow_backend(ctx, balancer, i + 1, port) {
            Ok(child) => slow.push(child),
            Err(err) => {
                warnings.push(format!(
                    "per-in-flight memory not measured: slow backend failed: {err:#}"
                ));
                return;
            }
        }
    }
    for r in proxies(results) {
        let port = ports.proxy(r.target, Phase::InFlight);
        eprintln!(
            "memory: {} with {} requests in flight",
            r.target.name(),
            settings.in_flight
        );
        let mut child =
            match start_proxy(ctx, r.target, Phase::InFlight, port, &ports.slow_backends) {
                Ok(child) => child,
                Err(err) => {
                    r.notes
                        .push(format!("in-flight phase: failed to start: {err:#}"));
                    continue;
                }
            };
        let pid = child.pid();
        let fds_start = procs::group_fds(pid);
        let held = match conns::open(SocketAddr::from(([127, 0, 0, 1], port)), settings.in_flight) {
            Ok(held) => held,
            Err(err) => {
                r.notes.push(format!("in-flight phase: {err:#}"));
                continue;
            }
        };
        let fds_idle = procs::settled_fds(pid, fds_start + held.streams.len(), FDS_SETTLE_MAX);
        let idle = procs::settled_rss_kib(pid, RSS_SETTLE_MAX);
        let sent = held.send_requests();
        // Let the proxy read every request and connect to a backend before reading RSS.
        thread::sleep(Duration::from_millis(500));
        // Each request in flight holds a backend connection too.
        let fds_busy = procs::settled_fds(pid, fds_idle + sent, FDS_SETTLE_MAX);
        let busy = procs::settled_rss_kib(pid, RSS_SETTLE_MAX);
        let open = held.still_open();
        eprintln!(
            "  {}: {sent} requests sent, {open} waiting; rss {idle} → {busy} KiB, fds {fds_idle} → {fds_busy}",
            r.target.name()
        );
        if sent < settings.in_flight || open < sent {
            r.notes.push(format!(
                "in-flight phase: {sent} of {} requests sent, {open} still waiting at RSS time",
                settings.in_flight
            ));
        }
        r.in_flight = Some((sent.min(open), idle, busy));
        drop(held);
        child.stop();
    }
    drop(slow);
}

/// CPU counters at the start of a measured window.
struct Window {
    proxy_ticks: Option<u64>,
    proxy_cpus: Option<(u64, u64)>,
    load_cpus: Option<(u64, u64)>,
}

/// What the CPUs did over a measured window.
struct WindowCpu {
    /// The proxy's own CPU seconds.
    cpu_s: Option<f64>,
    /// Busy time of the proxy's CPUs spent in other processes, percent.
    other_on_proxy_cpu_pct: Option<f64>,
    /// Busy time of the load generator's CPUs, percent.
    load_cpu_busy_pct: Option<f64>,
}

impl Window {
    fn start(child: Option<&Child>, proxy_cpus: &[usize], load_cpus: &[usize]) -> Window {
        Window {
            proxy_ticks: child.map(|c| procs::group_cpu_ticks(c.pid())),
            proxy_cpus: procs::cpus_ticks(proxy_cpus),
            load_cpus: procs::cpus_ticks(load_cpus),
        }
    }

    fn end(
        &self,
        child: Option<&Child>,
        proxy_cpus: &[usize],
        load_cpus: &[usize],
        ticks_per_s: f64,
    ) -> WindowCpu {
        let proxy_ticks = match (child, self.proxy_ticks) {
            (Some(c), Some(before)) => Some(procs::group_cpu_ticks(c.pid()).saturating_sub(before)),
            _ => None,
        };
        let delta = |before: Option<(u64, u64)>, cpus: &[usize]| {
            let (b0, t0) = before?;
            let (b1, t1) = procs::cpus_ticks(cpus)?;
            let total = t1.saturating_sub(t0);
            (total > 0).then(|| (b1.saturating_sub(b0), total))
        };
        let other_on_proxy_cpu_pct = delta(self.proxy_cpus, proxy_cpus).map(|(busy, total)| {
            busy.saturating_sub(proxy_ticks.unwrap_or(0)) as f64 * 100.0 / total as f64
        });
        let load_cpu_busy_pct = delta(self.load_cpus, load_cpus)
            .map(|(busy, total)| busy as f64 * 100.0 / total as f64);
        WindowCpu {
            cpu_s: proxy_ticks.map(|t| t as f64 / ticks_per_s),
            other_on_proxy_cpu_pct,
            load_cpu_busy_pct,
        }
    }
}

/// Interleaved closed- and open-loop runs against every target.
fn load_phase(
    ctx: &Ctx,
    ports: &Ports,
    settings: &Settings,
    load: &LoadGen,
    rate: u64,
    results: &mut [TargetResults],
) {
    let ticks_per_s = procs::clock_ticks_per_s();
    let proxy_cpus = procs::parse_cpu_list(&ctx.proxy_cpus);
    let load_cpus = procs::parse_cpu_list(&ctx.load_cpus);
    // One proxy instance per target for the whole phase, started fresh.
    let mut children: Vec<Option<Child>> = Vec::new();
    for r in results.iter_mut() {
        if r.target == Target::Direct || r.failure.is_some() {
            children.push(None);
            continue;
        }
        let port = ports.proxy(r.target, Phase::Load);
        match start_proxy(ctx, r.target, Phase::Load, port, &ports.backends) {
            Ok(child) => children.push(Some(child)),
            Err(err) => {
                eprintln!("compare-proxies: {}: {err:#}", r.target.name());
                r.failure = Some(format!("failed to start: {err:#}"));
                children.push(None);
            }
        }
    }
    for repeat in 1..=settings.repeats {
        for (r, child) in results.iter_mut().zip(children.iter_mut()) {
            if r.failure.is_some() || procs::stopping() {
                continue;
            }
            if let Some(c) = child.as_mut() {
                if let Some(status) = c.exited() {
                    r.failure = Some(format!(
                        "exited ({status}) during the load phase: {}",
                        c.stderr_tail()
                    ));
                    continue;
                }
            }
            let port = ports.proxy(r.target, Phase::Load);
            let name = r.target.name();
            eprintln!("load: repeat {repeat}/{}: {name}", settings.repeats);
            if !settings.warmup.is_zero() {
                let label = loadgen::label(&[name, &repeat.to_string(), "warmup"]);
                if let Err(err) = load.wrk(port, settings.warmup, &label) {
                    r.notes.push(format!("warm-up {repeat}: {err:#}"));
                }
            }
            let label = loadgen::label(&[name, &repeat.to_string(), "closed"]);
            let window = Window::start(child.as_ref(), &proxy_cpus, &load_cpus);
            match load.wrk(port, settings.duration, &label) {
                Ok(w) => {
                    let used = window.end(child.as_ref(), &proxy_cpus, &load_cpus, ticks_per_s);
                    let cpu = used.cpu_s;
                    if w.errors > 0 {
                        r.notes.push(format!(
                            "closed loop {repeat}: {} errors (non-2xx/3xx or socket errors)",
                            w.errors
                        ));
                    }
                    eprintln!(
                        "  closed: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, cpu {}, other load on \
                         proxy CPU {:.0} %, load CPU {:.0} %",
                        w.rps,
                        w.p50_ms,
                        w.p99_ms,
                        cpu.map_or("–".into(), |c| format!("{c:.2} s")),
                        used.other_on_proxy_cpu_pct.unwrap_or(f64::NAN),
                        used.load_cpu_busy_pct.unwrap_or(f64::NAN),
                    );
                    r.closed.push(ClosedSample {
                        rps: w.rps,
                        p50_ms: w.p50_ms,
                        p99_ms: w.p99_ms,
                        requests: w.requests,
                        errors: w.errors,
                        cpu_s: cpu,
                        other_on_proxy_cpu_pct: used.other_on_proxy_cpu_pct,
                        load_cpu_busy_pct: used.load_cpu_busy_pct,
                    });
                }
                Err(err) => r.notes.push(format!("closed loop {repeat}: {err:#}")),
            }
            if load.oha.is_some() {
                let label = loadgen::label(&[name, &repeat.to_string(), "open"]);
                let window = Window::start(child.as_ref(), &proxy_cpus, &load_cpus);
                match load.oha(port, rate, settings.duration, &label) {
                    Ok(o) => {
                        let used = window.end(child.as_ref(), &proxy_cpus, &load_cpus, ticks_per_s);
                        eprintln!(
                            "  open: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
                            o.rps, o.p50_ms, o.p99_ms, o.p999_ms
                        );
                        if o.rps < rate as f64 * OPEN_RATE_SHORTFALL {
                            r.notes.push(format!(
                                "open loop {repeat}: achieved {:.0} of {rate} req/s (the load \
                                 generator or the proxy could not keep up)",
                                o.rps
                            ));
                        }
                        if o.success_rate < 1.0 {
                            r.notes.push(format!(
                                "open loop {repeat}: success rate {:.4}",
                                o.success_rate
                            ));
                        }
                        r.open.push(OpenSample {
                            rps: o.rps,
                            p50_ms: o.p50_ms,
                            p99_ms: o.p99_ms,
                            p999_ms: o.p999_ms,
                            requests: (o.rps * settings.duration.as_secs_f64()).round() as u64,
                            success_rate: o.success_rate,
                            cpu_s: used.cpu_s,
                            other_on_proxy_cpu_pct: used.other_on_proxy_cpu_pct,
                            load_cpu_busy_pct: used.load_cpu_busy_pct,
                        });
                    }
                    Err(err) => r.notes.push(format!("open loop {repeat}: {err:#}")),
                }
            }
        }
    }
    for child in children.iter_mut().flatten() {
        child.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(args: &[&str]) -> anyhow::Result<Vec<Target>> {
        Cli::try_parse_from(["compare-proxies"].iter().chain(args))?.targets()
    }

    #[test]
    fn the_baseline_runs_right_after_the_balancer() {
        use Target::*;
        assert_eq!(targets(&[]).unwrap(), Target::ALL);
        assert_eq!(
            targets(&["--baseline", "/old/balancer"]).unwrap(),
            [Direct, Balancer, Baseline, Haproxy, Nginx]
        );
        assert_eq!(
            targets(&["--baseline", "b", "--targets", "haproxy,balancer"]).unwrap(),
            [Haproxy, Balancer, Baseline]
        );
        assert_eq!(
            targets(&["--baseline", "b", "--targets", "balancer-baseline,nginx"]).unwrap(),
            [Baseline, Nginx]
        );
        assert!(targets(&["--targets", "balancer,balancer-baseline"]).is_err());
    }
}
