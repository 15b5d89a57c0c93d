//! Operator commands that talk to something other than clients: `balancer explain ID` (asks a
//! running balancer's admin API) and `balancer check FILE --simulate TRACE` (runs the
//! `balancer-sim` binary as a subprocess: the team's dependency rule keeps the simulator out
//! of this crate).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use balancer_core::trace::{TRACE_HEADER, TraceRecord, parse_trace};
use serde_json::Value;

use crate::config::{Config, PoolConfig};

/// Connecting to the admin API: it is local, so a second is plenty.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reading its answer (an explanation is a few KiB).
const ADMIN_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the admin API: a request has at most 11 tries of ~2 KiB each.
const ADMIN_MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// `GET path` on the admin API at `admin` (with the bearer `token` if it asks for one);
/// returns the status and the body.
fn admin_get(admin: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let addresses: Vec<SocketAddr> = admin
        .to_socket_addrs()
        .with_context(|| format!("bad admin address {admin:?}; write HOST:PORT"))?
        .collect();
    let mut last_error = None;
    let mut stream = None;
    for address in &addresses {
        match TcpStream::connect_timeout(address, ADMIN_CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        let reason = last_error.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        bail!(
            "cannot reach the admin API at {admin}: {reason}; is the balancer running, and is \
             --admin its `admin` address?"
        );
    };
    stream.set_read_timeout(Some(ADMIN_READ_TIMEOUT))?;
    let authorization =
        token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nUser-Agent: balancer-cli\r\n{authorization}\r\n"
    )?;
    let mut answer = Vec::new();
    stream
        .take(ADMIN_MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer of the admin API at {admin}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("the admin API at {admin} sent no HTTP answer"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("the admin API at {admin} sent a malformed status line"))?;
    Ok((status, body.to_owned()))
}

/// `balancer explain ID`: the decision records of a request, for a person.
pub fn explain(id: &str, admin: &str, token: Option<&str>) -> anyhow::Result<String> {
    let path = format!("/explain/{}", crate::observe::explain::percent_encode(id));
    let (status, body) = admin_get(admin, &path, token)?;
    match status {
        200 => {}
        401 => bail!(
            "the admin API at {admin} asks for its token: pass --admin-token-file FILE (the balancer's admin_token_file)"
        ),
        404 | 400 => bail!("{}", body.trim_end()),
        other => bail!(
            "the admin API at {admin} answered {other}: {}",
            body.trim_end()
        ),
    }
    let json: Value = serde_json::from_str(&body)
        .with_context(|| format!("the admin API at {admin} sent JSON that does not parse"))?;
    Ok(render_explanation(&json))
}

/// A few lines per try.
pub fn render_explanation(json: &Value) -> String {
    let mut out = String::new();
    let tries = json["tries"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "request {}: {} {}",
        json["request_id"].as_str().unwrap_or("?"),
        tries.len(),
        if tries.len() == 1 { "try" } else { "tries" }
    );
    for t in &tries {
        let outcome = match t["chosen"].as_str() {
            Some(address) => format!("sent to {address}"),
            None => format!(
                "rejected ({})",
                t["reject_reason"].as_str().unwrap_or("no reason given")
            ),
        };
        let _ = writeln!(
            out,
            "try {}{} at {}: pool {}, {}, {}",
            t["try"],
            if t["retry"] == true { " (retry)" } else { "" },
            t["time"].as_str().unwrap_or("?"),
            t["pool"].as_str().unwrap_or("?"),
            t["policy"].as_str().unwrap_or("?"),
            outcome
        );
        let _ = writeln!(out, "  why: {}", t["rule"].as_str().unwrap_or("?"));
        for c in t["candidates"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {:<6} {}  pending {}  weight {}  ewma {} ms  ({})",
                c["role"].as_str().unwrap_or("?"),
                c["address"].as_str().unwrap_or("?"),
                c["pending"],
                c["weight"],
                c["ewma_ms"],
                c["state"].as_str().unwrap_or("?"),
            );
        }
        let _ = writeln!(
            out,
            "  {} of {} backends eligible{}",
            t["eligible"],
            t["backends"],
            if t["panic"] == true {
                " (panic mode)"
            } else {
                ""
            }
        );
        for s in t["skipped"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  skipped {}: {}",
                s["address"].as_str().unwrap_or("?"),
                s["reason"].as_str().unwrap_or("?")
            );
        }
    }
    out
}

/// Options of `balancer check FILE --simulate TRACE`.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// The recorded traffic.
    pub trace: PathBuf,
    /// The config in force, to compare against.
    pub current: Option<PathBuf>,
    /// Seed of the simulator's draws.
    pub seed: u64,
    /// Requests each simulated backend serves at once (`balancer-sim replay --concurrency`).
    pub concurrency: u32,
}

/// One replay's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Requests rejected.
    pub rejected: u64,
    /// Requests failed.
    pub failed: u64,
    /// Requests completed.
    pub completed: u64,
}

/// The `balancer-sim` binary: `$BALANCER_SIM`, else next to this executable, else on `PATH`.
pub fn find_simulator() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BALANCER_SIM") {
        return Ok(PathBuf::from(path));
    }
    let name = format!("balancer-sim{}", std::env::consts::EXE_SUFFIX);
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
        .filter(|p| p.is_file())
    {
        return Ok(beside);
    }
    if let Some(found) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&name))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    bail!(
        "predictions need the simulator, `balancer-sim`, next to this binary or on PATH (or named by \
         $BALANCER_SIM); install it with `cargo install --locked --path balancer-sim` from the \
         balancer's source tree, or build it with `cargo build --release -p balancer-sim`"
    )
}

/// `balancer check FILE --simulate TRACE [--current OLD]`: a report, pool by pool.
pub fn check_simulate(
    file: &Path,
    new: &Config,
    options: &SimulateOptions,
) -> anyhow::Result<String> {
    let simulator = find_simulator()?;
    let text = std::fs::read_to_string(&options.trace)
        .with_context(|| format!("{}: cannot read the trace", options.trace.display()))?;
    let records = parse_trace(&text)
        .with_context(|| format!("{}: not a usable trace", options.trace.display()))?;
    let old = options
        .current
        .as_deref()
        .map(|path| Config::load(path).with_context(|| "the --current config is not valid"))
        .transpose()?;
    let new_json = crate::config::config_json(new);
    let old_json = old.as_ref().map(crate::config::config_json);
    let scratch = Scratch::new()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "simulating {} with the traffic in {} ({} requests){}",
        file.display(),
        options.trace.display(),
        records.len(),
        options
            .current
            .as_ref()
            .map_or_else(String::new, |p| format!(", against {}", p.display()))
    );
    if let Some(old_json) = &old_json {
        let outside_pools: Vec<String> = crate::config::changed_keys(old_json, &new_json)
            .into_iter()
            .filter(|key| !key.starts_with("pools."))
            .collect();
        if !outside_pools.is_empty() {
            let _ = writeln!(
                out,
                "not simulated (outside the pools): {}; the replay's arrivals are the recorded ones",
                outside_pools.join(", ")
            );
        }
    }
    for (index, pool) in new.pools.iter().enumerate() {
        let new_pool = &new_json["pools"][index];
        let old_pool = old.as_ref().and_then(|o| {
            let position = o.pools.iter().position(|p| p.name == pool.name)?;
            Some((&o.pools[position], &old_json.as_ref()?["pools"][position]))
        });
        if let Some((_, old_pool_json)) = old_pool
            && *old_pool_json == *new_pool
        {
            let _ = writeln!(out, "\npool {}: unchanged", pool.name);
            continue;
        }
        let pool_records: Vec<&TraceRecord> =
            records.iter().filter(|r| r.pool == pool.name).collect();
        let _ = write!(out, "\npool {}", pool.name);
        let mut not_simulated: Vec<&str> = Vec::new();
        if let Some((_, old_pool_json)) = old_pool {
            let changed: Vec<&str> = new_pool
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| old_pool_json.get(k.as_str()) != Some(v))
                .map(|(k, _)| k.as_str())
                .collect();
            let _ = write!(out, " (changed: {})", changed.join(", "));
            not_simulated = changed
                .into_iter()
                .filter(|key| !SIMULATED_POOL_KEYS.contains(key))
                .collect();
        } else if old.is_some() {
            let _ = write!(out, " (new pool)");
        }
        let _ = writeln!(out, ": {} requests in the trace", pool_records.len());
        if !not_simulated.is_empty() {
            let _ = writeln!(
                out,
                "  not simulated: {} (the replay models {})",
                not_simulated.join(", "),
                SIMULATED_POOL_KEYS.join(", ")
            );
        }
        if !pool_records
            .iter()
            .any(|r| r.outcome == balancer_core::trace::TraceOutcome::Ok)
        {
            let _ = writeln!(
                out,
                "  no served request of this pool in the trace: nothing to replay"
            );
            continue;
        }
        let trace_path = scratch.write_trace(&pool.name, &pool_records)?;
        let new_prediction = replay(&simulator, &scratch, &trace_path, pool, options)?;
        let old_prediction = old_pool
            .map(|(old_pool, _)| replay(&simulator, &scratch, &trace_path, old_pool, options))
            .transpose()?;
        out.push_str(&side_by_side(
            old_pool.map(|(p, _)| p),
            old_prediction.as_ref(),
            pool,
            &new_prediction,
        ));
    }
    Ok(out)
}

/// The simulator's prediction for `pool` over `records`, some of its recorded traffic (the
/// dashboard's replay of the last minute of a recording trace).
pub fn predict(
    pool: &PoolConfig,
    records: &[&TraceRecord],
    seed: u64,
    concurrency: u32,
) -> anyhow::Result<Prediction> {
    let simulator = find_simulator()?;
    let scratch = Scratch::new()?;
    let trace = scratch.write_trace(&pool.name, records)?;
    let options = SimulateOptions {
        trace: trace.clone(),
        current: None,
        seed,
        concurrency,
    };
    replay(&simulator, &scratch, &trace, pool, &options)
}

fn describe(pool: &PoolConfig) -> String {
    let weights: Vec<String> = pool.backends.iter().map(|b| b.weight.to_string()).collect();
    let weighted = if pool.backends.iter().any(|b| b.weight != 1) {
        format!(" (weights {})", weights.join(","))
    } else {
        String::new()
    };
    format!(
        "{} over {} backends{weighted}",
        pool.policy.name(),
        pool.backends.len()
    )
}

/// How one row of the side-by-side table shows a prediction.
type Cell = dyn Fn(&Prediction) -> String;

fn side_by_side(
    old_pool: Option<&PoolConfig>,
    old: Option<&Prediction>,
    new_pool: &PoolConfig,
    new: &Prediction,
) -> String {
    let mut out = String::new();
    let column = |p: Option<&Prediction>, f: &Cell| p.map_or_else(|| "-".to_owned(), f);
    let rows: [(&str, &Cell); 5] = [
        ("mean latency", &|p| format!("{:.3} ms", p.mean_ms)),
        ("p99 latency", &|p| format!("{:.3} ms", p.p99_ms)),
        ("rejected", &|p| p.rejected.to_string()),
        ("failed", &|p| p.failed.to_string()),
        ("completed", &|p| p.completed.to_string()),
    ];
    let _ = writeln!(
        out,
        "  {:<14} {:>40} {:>40}",
        "",
        old_pool.map_or_else(
            || "current: -".to_owned(),
            |p| format!("current: {}", describe(p))
        ),
        format!("new: {}", describe(new_pool))
    );
    for (name, f) in rows {
        let _ = writeln!(
            out,
            "  {:<14} {:>40} {:>40}",
            name,
            column(old, f),
            column(Some(new), f)
        );
    }
    out
}

/// Runs `balancer-sim replay` for one pool definition over that pool's trace.
fn replay(
    simulator: &Path,
    scratch: &Scratch,
    trace: &Path,
    pool: &PoolConfig,
    options: &SimulateOptions,
) -> anyhow::Result<Prediction> {
    // One simulated backend per configured backend, in address order: the simulator pairs
    // recorded addresses, sorted, with its backends, so each keeps its own service times.
    let mut backends: Vec<_> = pool.backends.iter().collect();
    backends.sort_by(|a, b| a.address.cmp(&b.address));
    let mut fleet = String::new();
    for backend in backends {
        let _ = writeln!(
            fleet,
            "[[backend]]\ncount = 1\nweight = {}\nconcurrency = {}\n",
            backend.weight, options.concurrency
        );
    }
    fleet.push_str(&core_options(pool));
    let fleet_path = scratch.write(
        &format!("{}-{}.fleet.toml", pool.name, pool.policy.name()),
        &fleet,
    )?;
    let output = Command::new(simulator)
        .arg("replay")
        .arg("--trace")
        .arg(trace)
        .args(["--policy", pool.policy.name()])
        .arg("--fleet")
        .arg(&fleet_path)
        .args(["--seed", &options.seed.to_string(), "--format", "json"])
        .output()
        .with_context(|| format!("cannot run {}", simulator.display()))?;
    if !output.status.success() {
        bail!(
            "{} replay failed for pool {}: {}",
            simulator.display(),
            pool.name,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let json: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "{} replay printed no JSON: {}",
            simulator.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    Ok(Prediction {
        mean_ms: number(&json["latency_ms"]["mean"]),
        p99_ms: number(&json["latency_ms"]["p99"]),
        rejected: json["rejected"].as_u64().unwrap_or(0),
        failed: json["failed"].as_u64().unwrap_or(0),
        completed: json["completed"].as_u64().unwrap_or(0),
    })
}

/// The pool settings a replay carries over to the simulator (`core_options` and the fleet);
/// a change to any other is named as not simulated.
const SIMULATED_POOL_KEYS: [&str; 6] = [
    "policy",
    "backends",
    "max_pending_per_backend",
    "panic_threshold_percent",
    "outlier",
    "retry",
];

/// The pool's defences the simulator models, as its scenario file's `[core]` table: the
/// per-backend cap (which is where predicted rejections come from), the panic threshold,
/// outlier ejection and retries. Health probes and slow start are left out: a replay has no
/// crashes for probes to find, nor backends coming back to ramp up.
fn core_options(pool: &PoolConfig) -> String {
    let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
    let mut core = String::from("[core]\n");
    if let Some(cap) = pool.max_pending_per_backend {
        let _ = writeln!(core, "max_pending_per_backend = {cap}");
    }
    if let Some(percent) = pool.panic_threshold_percent {
        let _ = writeln!(core, "panic_threshold_percent = {percent}");
    }
    if let Some(o) = pool.outlier {
        let _ = writeln!(
            core,
            "[core.outlier]\nconsecutive_failures = {}\nbase_ejection = {}\nmax_ejection = {}\nmax_ejected_percent = {}",
            o.consecutive_failures,
            ms(o.base_ejection),
            ms(o.max_ejection),
            o.max_ejected_percent
        );
    }
    if let Some(r) = pool.retry {
        let _ = writeln!(
            core,
            "[core.retry]\nmax_retries = {}\nretry_on_status = {:?}\nbudget_ratio = {:?}\nbudget_min_per_s = {}\nbudget_window = {}\nbackoff_base = {}\nbackoff_max = {}",
            r.max_retries,
            r.retry_on_status.iter().collect::<Vec<_>>(),
            r.budget_ratio,
            r.budget_min_per_s,
            ms(r.budget_window),
            ms(r.backoff_base),
            ms(r.backoff_max)
        );
    }
    core
}

/// A directory of temporary per-pool traces and fleet files, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("balancer-simulate-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch { dir })
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        // Pool names may hold any character a TOML key can; keep the file name plain.
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    fn write_trace(&self, pool: &str, records: &[&TraceRecord]) -> anyhow::Result<PathBuf> {
        let mut text = String::with_capacity(records.len() * 80 + TRACE_HEADER.len());
        text.push_str(TRACE_HEADER);
        text.push('\n');
        for record in records {
            let _ = writeln!(text, "{record}");
        }
        self.write(&format!("{pool}.trace"), &text)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
