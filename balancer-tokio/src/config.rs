//! The TOML configuration: its file format (serde, unknown keys rejected) and semantic validation.
//!
//! Two layers: `RawConfig` is exactly what the file says (with source spans so errors can point
//! at a line and column), [`Config`] is the validated form the server runs from.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use balancer_core::{MAX_WEIGHT, PolicyKind};
use serde::Deserialize;
use toml::Spanned;

use crate::access_log::AccessLogFormat;
use crate::routing::HostPattern;

/// Default seconds-scale limits, each with the reason for its size.
pub mod defaults {
    /// Longest a client may take to send a request's headers. Slowloris protection; 10 s is
    /// generous for any real client on a slow link.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    /// Largest request head (request line + headers). 16 KiB fits large cookies; nginx uses 8–32 KiB.
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    /// Smallest `max_header_bytes` accepted: hyper's read buffer cannot be smaller.
    pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
    /// Largest request body forwarded. 10 MiB: uploads beyond that should be configured on purpose.
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    /// Concurrent client connections per listener; beyond it, accepting pauses (the kernel backlog
    /// holds the rest). Keeps file descriptors and memory bounded under a connection flood.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// How long shutdown waits for in-flight requests before closing them.
    pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
    /// Most traffic threads: far above any core count worth serving from one process, low
    /// enough that a typo (`workers = 10000`) is refused instead of starting that many threads.
    pub const MAX_WORKERS: usize = 256;
    /// Connecting to a backend on a LAN takes well under a second; longer means it is gone.
    pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
    /// Time from request sent to response headers received before answering 504.
    pub const RESPONSE_HEADER_TIMEOUT_MS: u64 = 30_000;
    /// Idle keep-alive connections to a backend are closed after this (below typical backend
    /// keep-alive timeouts of 60–75 s, so the proxy closes first and never reuses a dying one).
    pub const IDLE_TIMEOUT_MS: u64 = 50_000;
    /// Idle keep-alive connections kept per backend: enough for bursts, bounded for memory.
    pub const MAX_IDLE_PER_BACKEND: usize = 256;
    /// Seed of each pool's ChaCha8 RNG: fixed so that runs are reproducible unless configured.
    pub const SEED: u64 = 0;
    /// The admin listener: loopback only, so that nothing but this machine can drain backends
    /// or read metrics unless the operator deliberately binds it elsewhere.
    pub const ADMIN: &str = "127.0.0.1:9901";
    /// Request arrival to response headers, across every try and backoff: two full per-try
    /// timeouts (the default 30 s each), so a retry after one slow try still has its chance.
    pub const REQUEST_TIMEOUT_MS: u64 = 60_000;
    /// Active health checks: a probe every 2 s finds a dead backend within `fall` × 2 s.
    pub const HEALTH_INTERVAL_MS: u64 = 2_000;
    /// A probe slower than 1 s counts as failed: a healthy backend answers its health path fast.
    pub const HEALTH_TIMEOUT_MS: u64 = 1_000;
    /// Statuses a probe accepts (HAProxy's `http-check expect status` default is 2xx/3xx).
    pub const HEALTH_EXPECTED_STATUS: (u16, u16) = (200, 399);
    /// Client IPs whose rate-limit state is kept at once. One entry is tens of bytes, so 100 000
    /// is a few MiB at most; past it idle entries are dropped, then all (see `ratelimit`).
    pub const MAX_TRACKED_CLIENTS: usize = 100_000;
    /// Slow start begins at 10 % of the configured weight (Envoy's `min_weight_percent`).
    pub const SLOW_START_MIN_WEIGHT_PERCENT: u8 = 10;
    /// Largest `max_retries` accepted: each retry is another full try against the pool.
    pub const MAX_RETRIES_LIMIT: u32 = 10;
    /// A trace file is rotated past 100 MiB: about a million requests at ~100 bytes a line.
    pub const TRACE_MAX_BYTES: u64 = 100 * 1024 * 1024;
    /// Trace files kept (the current one included): `path`, `path.1`, `path.2`.
    pub const TRACE_MAX_FILES: u32 = 3;
    /// Smallest `trace.max_bytes`: below a few lines per file rotation would be all the writer does.
    pub const TRACE_MIN_BYTES: u64 = 1024;
    /// Most `trace.max_files`: bounds the renames per rotation and the disk an operator can forget.
    pub const TRACE_FILES_LIMIT: u32 = 100;
}

/// Why a configuration was refused. Every message names the file and, when it can, the line and
/// column, and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why (the OS error, in words; kept as text so it is printed once).
        reason: String,
    },
    /// The file is not valid, at a known place.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what to change.
        message: String,
    },
    /// The file is not valid as a whole (e.g. nothing to listen on).
    #[error("{path}: {message}")]
    Whole {
        /// The file.
        path: String,
        /// What is wrong and what to change.
        message: String,
    },
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to accept clients.
    pub listeners: Vec<ListenerConfig>,
    /// Named sets of backends, each with its own scheduler.
    pub pools: Vec<PoolConfig>,
    /// How requests are mapped to pools, in file order.
    pub routes: Vec<RouteConfig>,
    /// Limits on what clients may send.
    pub limits: Limits,
    /// Access-log format.
    pub access_log: AccessLogFormat,
    /// Grace period for in-flight requests on shutdown, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// The admin listener's address; `None` when `admin = "off"`.
    pub admin: Option<SocketAddr>,
    /// Global and per-client rate limits (per-route ones are on the routes).
    pub rate_limit: RateLimitConfig,
    /// Decision records kept for `GET /explain/{id}` (tries); 0 turns them off.
    pub explain_ring_size: usize,
    /// Traffic recording, if configured.
    pub trace: Option<TraceConfig>,
    /// Threads serving traffic, each with its own event loop and its own `SO_REUSEPORT`
    /// socket per listener; `None` means one per CPU this process may run on.
    pub workers: Option<usize>,
}

/// `[trace]`: where and how much traffic to record (`balancer_core::trace` format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// The file written; rotated ones are `path.1`, `path.2`, ...
    pub path: PathBuf,
    /// A file is rotated before it would grow past this.
    pub max_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

/// A GCRA rate: `rate_per_s` requests per second on average, bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sustained requests per second (at least 1).
    pub rate_per_s: u32,
    /// Requests allowed at once after a quiet period (at least 1).
    pub burst: u32,
}

/// Rate limits that are not per route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// One limit shared by all requests.
    pub global: Option<Rate>,
    /// One limit per client IP address.
    pub per_client: Option<Rate>,
    /// Most client addresses whose state is kept at once (bounds the keyed map).
    pub max_tracked_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            global: None,
            per_client: None,
            max_tracked_clients: defaults::MAX_TRACKED_CLIENTS,
        }
    }
}

/// Active health checks of a pool's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path of the `GET` probe.
    pub path: String,
    /// Time between probes of one backend, in milliseconds.
    pub interval_ms: u64,
    /// A probe without response headers within this fails, in milliseconds.
    pub timeout_ms: u64,
    /// Passing probes in a row that bring a down backend up.
    pub rise: u32,
    /// Failing probes in a row that take an up backend down.
    pub fall: u32,
    /// Lowest status that passes.
    pub expected_status_min: u16,
    /// Highest status that passes.
    pub expected_status_max: u16,
}

/// Slow start: a backend that comes (back) up gets a growing share of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowStart {
    /// How long the ramp lasts, in milliseconds.
    pub window_ms: u64,
    /// The weight it starts at, in percent of its configured weight.
    pub min_weight_percent: u8,
}

/// One listening socket.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Its name (for routes and logs).
    pub name: String,
    /// The address to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// Concurrent connections accepted on it.
    pub max_connections: usize,
}

/// One pool of backends.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Its name, as routes refer to it.
    pub name: String,
    /// The core policy that picks a backend.
    pub policy: PolicyKind,
    /// Seed of the pool's ChaCha8 RNG.
    pub seed: u64,
    /// The backends.
    pub backends: Vec<BackendConfig>,
    /// TCP connect timeout to a backend, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Request sent to response headers received, in milliseconds; then 504.
    pub response_header_timeout_ms: u64,
    /// Idle keep-alive connections to backends are closed after this, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Idle keep-alive connections kept per backend.
    pub max_idle_per_backend: usize,
    /// Requests in flight in this pool beyond which new ones get 503.
    pub max_in_flight: u32,
    /// Circuit breaking: requests in flight per backend; when every backend is at it, 503.
    pub max_pending_per_backend: Option<u32>,
    /// Arrival to response headers across all tries and backoffs, in milliseconds; then 504.
    pub request_timeout_ms: u64,
    /// Active health checks; `None`: backends are never probed.
    pub health_check: Option<HealthCheck>,
    /// Passive health (outlier ejection); `None`: failures never eject.
    pub outlier: Option<balancer_core::OutlierConfig>,
    /// Retries; `None` (or `max_retries = 0`): never retried.
    pub retry: Option<balancer_core::RetryConfig>,
    /// Slow start for backends that come (back) up.
    pub slow_start: Option<SlowStart>,
    /// Below this percentage of healthy backends, traffic spreads over all of them.
    pub panic_threshold_percent: Option<u8>,
}

/// One backend of a pool.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// `host:port`; the host may be an IP or a DNS name (e.g. a compose service).
    pub address: String,
    /// Relative weight (policies that use weights).
    pub weight: u32,
}

/// One route: which requests go to which pool.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Its name in access logs.
    pub name: String,
    /// Host pattern (exact, `*.suffix`, or any).
    pub host: HostPattern,
    /// Path prefix, matched on `/` boundaries.
    pub path_prefix: String,
    /// Listener port the request must arrive on, if any.
    pub port: Option<u16>,
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// This route's own rate limit.
    pub rate_limit: Option<Rate>,
}

/// Limits on clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest time to receive a request's headers, in milliseconds; then 408.
    pub header_read_timeout_ms: u64,
    /// Largest request head; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout_ms: defaults::HEADER_READ_TIMEOUT_MS,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
        }
    }
}

// --- The file format -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    listeners: Vec<RawListener>,
    backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    policy: Option<Spanned<String>>,
    #[serde(default)]
    pools: BTreeMap<Spanned<String>, RawPool>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    access_log: Option<AccessLogFormat>,
    shutdown_grace_ms: Option<u64>,
    header_read_timeout_ms: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<usize>>,
    max_body_bytes: Option<u64>,
    max_connections: Option<Spanned<usize>>,
    admin: Option<Spanned<String>>,
    rate_limit: Option<RawRateLimit>,
    explain_ring_size: Option<Spanned<usize>>,
    trace: Option<Spanned<RawTrace>>,
    workers: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrace {
    path: PathBuf,
    max_bytes: Option<u64>,
    max_files: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    global: Option<Spanned<RawRate>>,
    per_client: Option<Spanned<RawRate>>,
    max_tracked_clients: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    rate_per_s: u32,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: Option<Spanned<String>>,
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    expected_status: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    consecutive_failures: Option<Spanned<u32>>,
    base_ejection_ms: Option<u64>,
    max_ejection_ms: Option<u64>,
    max_ejected_percent: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_retries: Option<Spanned<u32>>,
    retry_non_idempotent: Option<bool>,
    retry_on_503: Option<bool>,
    budget_ratio: Option<Spanned<f64>>,
    budget_min_per_s: Option<u32>,
    budget_window_ms: Option<Spanned<u64>>,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlowStart {
    window_ms: Spanned<u64>,
    min_weight_percent: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    address: Spanned<String>,
    max_connections: Option<Spanned<usize>>,
}

/// A backend is `"host:port"` or `{ address = "host:port", weight = N }`.
enum RawBackend {
    Address(String),
    Weighted(RawWeightedBackend),
}

// Written by hand rather than `#[serde(untagged)]` so that a mistake inside the table form
// (e.g. a misspelt key) is reported as such instead of "did not match any variant".
impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawBackend;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Address(value.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawBackend, A::Error> {
                RawWeightedBackend::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawBackend::Weighted)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeightedBackend {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    policy: Option<Spanned<String>>,
    seed: Option<u64>,
    backends: Spanned<Vec<Spanned<RawBackend>>>,
    connect_timeout_ms: Option<u64>,
    response_header_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_idle_per_backend: Option<usize>,
    max_in_flight: Option<u32>,
    max_pending_per_backend: Option<Spanned<u32>>,
    request_timeout_ms: Option<Spanned<u64>>,
    health_check: Option<RawHealthCheck>,
    outlier: Option<RawOutlier>,
    retry: Option<RawRetry>,
    slow_start: Option<RawSlowStart>,
    panic_threshold_percent: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    pool: Spanned<String>,
    rate_limit: Option<Spanned<RawRate>>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: shown.clone(),
            reason: err.to_string(),
        })?;
        Config::from_toml_str(&text, &shown)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn from_toml_str(text: &str, path: &str) -> Result<Config, ConfigError> {
        let errors = Errors { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|err| {
            let message = err.message().trim_end().to_owned();
            match err.span() {
                Some(span) => errors.at(span, message),
                None => ConfigError::Whole {
                    path: path.to_owned(),
                    message,
                },
            }
        })?;
        validate(raw, &errors)
    }

    /// Threads serving traffic: `workers`, or one per CPU this process may run on (its
    /// affinity mask and cgroup quota count, so `taskset -c 0` gives 1).
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(defaults::MAX_WORKERS)
        })
    }

    /// A one-line summary for `balancer check`.
    pub fn summary(&self) -> String {
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| l.address.to_string())
            .collect();
        format!(
            "{} listener(s) [{}], {} pool(s) with {} backend(s), {} route(s)",
            self.listeners.len(),
            listeners.join(", "),
            self.pools.len(),
            backends,
            self.routes.len()
        )
    }
}

struct Errors<'a> {
    text: &'a str,
    path: &'a str,
}

impl Errors<'_> {
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError::At {
            path: self.path.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    fn whole(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Whole {
            path: self.path.to_owned(),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn validate(raw: RawConfig, errors: &Errors<'_>) -> Result<Config, ConfigError> {
    let default_max_connections = match raw.max_connections {
        Some(value) if *value.get_ref() == 0 => {
            return Err(errors.at(
                value.span(),
                "max_connections must be at least 1; remove it for the default of 10000",
            ));
        }
        Some(value) => value.into_inner(),
        None => defaults::MAX_CONNECTIONS,
    };

    // Listeners: the `listen` shorthand or `[[listeners]]`, not both.
    let mut listeners = Vec::new();
    if let Some(listen) = &raw.listen {
        if !raw.listeners.is_empty() {
            return Err(errors.at(
                listen.span(),
                "both `listen` and `[[listeners]]` are set; keep one (move this address into a [[listeners]] entry)",
            ));
        }
        listeners.push(ListenerConfig {
            name: "default".into(),
            address: parse_listen_address(listen, errors)?,
            max_connections: default_max_connections,
        });
    }
    let mut seen_addresses = HashSet::new();
    let mut seen_names = HashSet::new();
    for (index, raw_listener) in raw.listeners.iter().enumerate() {
        let address = parse_listen_address(&raw_listener.address, errors)?;
        // Port 0 asks the OS for a fresh port each time, so two of them never clash.
        if address.port() != 0 && !seen_addresses.insert(address) {
            return Err(errors.at(
                raw_listener.address.span(),
                format!(
                    "duplicate listener address {address}; each listener needs its own address:port"
                ),
            ));
        }
        let name = raw_listener
            .name
            .clone()
            .unwrap_or_else(|| format!("listener{index}"));
        if !seen_names.insert(name.clone()) {
            return Err(errors.at(
                raw_listener.address.span(),
                format!("duplicate listener name {name:?}; give each listener its own name"),
            ));
        }
        let max_connections = match &raw_listener.max_connections {
            Some(value) if *value.get_ref() == 0 => {
                return Err(errors.at(value.span(), "max_connections must be at least 1"));
            }
            Some(value) => *value.get_ref(),
            None => default_max_connections,
        };
        listeners.push(ListenerConfig {
            name,
            address,
            max_connections,
        });
    }
    if listeners.is_empty() {
        return Err(errors.whole(
            "nothing to listen on; add `listen = \"127.0.0.1:8080\"` or a [[listeners]] table with an `address`",
        ));
    }

    // Pools: the `backends` shorthand makes a pool named "default".
    let mut pools = Vec::new();
    if let Some(backends) = raw.backends {
        if raw.pools.keys().any(|name| name.get_ref() == "default") {
            return Err(errors.at(
                backends.span(),
                "top-level `backends` defines the pool \"default\", which [pools.default] defines too; keep one",
            ));
        }
        let policy = parse_policy(raw.policy.as_ref(), errors)?;
        pools.push(pool_config(
            "default".into(),
            policy,
            None,
            backends,
            errors,
        )?);
    } else if let Some(policy) = &raw.policy {
        return Err(errors.at(
            policy.span(),
            "top-level `policy` applies to the top-level `backends`, which is missing; set `policy` inside a [pools.NAME] table instead",
        ));
    }
    for (name, raw_pool) in raw.pools {
        let policy = parse_policy(raw_pool.policy.as_ref(), errors)?;
        let mut pool = pool_config(
            name.get_ref().clone(),
            policy,
            raw_pool.seed,
            raw_pool.backends,
            errors,
        )?;
        if let Some(ms) = raw_pool.connect_timeout_ms {
            pool.connect_timeout_ms = ms;
        }
        if let Some(ms) = raw_pool.response_header_timeout_ms {
            pool.response_header_timeout_ms = ms;
        }
        if let Some(ms) = raw_pool.idle_timeout_ms {
            pool.idle_timeout_ms = ms;
        }
        if let Some(n) = raw_pool.max_idle_per_backend {
            pool.max_idle_per_backend = n;
        }
        if let Some(n) = raw_pool.max_in_flight {
            pool.max_in_flight = n;
        }
        if let Some(n) = raw_pool.max_pending_per_backend {
            if *n.get_ref() == 0 {
                return Err(errors.at(
                    n.span(),
                    "max_pending_per_backend must be at least 1 (drain a backend to give it no work)",
                ));
            }
            pool.max_pending_per_backend = Some(n.into_inner());
        }
        if let Some(ms) = raw_pool.request_timeout_ms {
            if *ms.get_ref() == 0 {
                return Err(errors.at(ms.span(), "request_timeout_ms must be at least 1"));
            }
            pool.request_timeout_ms = ms.into_inner();
        }
        if let Some(raw_check) = raw_pool.health_check {
            pool.health_check = Some(health_check(raw_check, errors)?);
        }
        if let Some(raw_outlier) = raw_pool.outlier {
            pool.outlier = Some(outlier(raw_outlier, errors)?);
        }
        if let Some(raw_retry) = raw_pool.retry {
            pool.retry = retry(raw_retry, errors)?;
        }
        if let Some(raw_slow) = raw_pool.slow_start {
            let percent = match raw_slow.min_weight_percent {
                Some(p) if !(1..=100).contains(p.get_ref()) => {
                    return Err(errors.at(p.span(), "min_weight_percent must be 1-100"));
                }
                Some(p) => p.into_inner(),
                None => defaults::SLOW_START_MIN_WEIGHT_PERCENT,
            };
            if *raw_slow.window_ms.get_ref() == 0 {
                return Err(errors.at(
                    raw_slow.window_ms.span(),
                    "slow_start window_ms must be at least 1; remove slow_start to turn it off",
                ));
            }
            pool.slow_start = Some(SlowStart {
                window_ms: raw_slow.window_ms.into_inner(),
                min_weight_percent: percent,
            });
        }
        if let Some(p) = raw_pool.panic_threshold_percent {
            if *p.get_ref() > 100 {
                return Err(errors.at(p.span(), "panic_threshold_percent must be 0-100"));
            }
            pool.panic_threshold_percent = Some(p.into_inner());
        }
        pools.push(pool);
    }
    if pools.is_empty() {
        return Err(errors.whole(
            "no backends; add `backends = [\"127.0.0.1:9001\"]` or a [pools.NAME] table with `backends`",
        ));
    }

    // Routes: none means everything goes to the only pool.
    let mut routes = Vec::new();
    for (index, raw_route) in raw.routes.into_iter().enumerate() {
        let pool = pools
            .iter()
            .position(|p| p.name == *raw_route.pool.get_ref())
            .ok_or_else(|| {
                let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                errors.at(
                    raw_route.pool.span(),
                    format!(
                        "route refers to unknown pool {:?}; known pools: {}",
                        raw_route.pool.get_ref(),
                        known.join(", ")
                    ),
                )
            })?;
        let host = match &raw_route.host {
            None => HostPattern::Any,
            Some(host) => HostPattern::parse(host.get_ref()).map_err(|why| {
                errors.at(
                    host.span(),
                    format!("bad route host {:?}: {why}", host.get_ref()),
                )
            })?,
        };
        let path_prefix = match &raw_route.path_prefix {
            None => "/".to_owned(),
            Some(prefix) if !prefix.get_ref().starts_with('/') => {
                return Err(errors.at(
                    prefix.span(),
                    format!(
                        "path_prefix {:?} must start with '/', e.g. \"/{}\"",
                        prefix.get_ref(),
                        prefix.get_ref()
                    ),
                ));
            }
            Some(prefix) => prefix.get_ref().clone(),
        };
        let port = match &raw_route.port {
            None => None,
            Some(port) => {
                let value = *port.get_ref();
                if !listeners.iter().any(|l| l.address.port() == value) {
                    return Err(errors.at(
                        port.span(),
                        format!(
                            "route port {value} matches no listener; listeners use ports: {}",
                            listeners
                                .iter()
                                .map(|l| l.address.port().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                Some(value)
            }
        };
        routes.push(RouteConfig {
            name: raw_route.name.unwrap_or_else(|| format!("route{index}")),
            host,
            path_prefix,
            port,
            pool,
            rate_limit: raw_route.rate_limit.map(|r| rate(r, errors)).transpose()?,
        });
    }
    if routes.is_empty() {
        if pools.len() > 1 {
            return Err(errors.whole(format!(
                "{} pools but no [[routes]]; add a [[routes]] entry with `pool = \"NAME\"` for each pool that should get traffic",
                pools.len()
            )));
        }
        routes.push(RouteConfig {
            name: "default".into(),
            host: HostPattern::Any,
            path_prefix: "/".into(),
            port: None,
            pool: 0,
            rate_limit: None,
        });
    }

    let mut limits = Limits::default();
    if let Some(ms) = raw.header_read_timeout_ms {
        if *ms.get_ref() == 0 {
            return Err(errors.at(ms.span(), "header_read_timeout_ms must be at least 1"));
        }
        limits.header_read_timeout_ms = ms.into_inner();
    }
    if let Some(bytes) = raw.max_header_bytes {
        if *bytes.get_ref() < defaults::MIN_MAX_HEADER_BYTES {
            return Err(errors.at(
                bytes.span(),
                format!(
                    "max_header_bytes must be at least {} (the HTTP/1 read buffer's minimum)",
                    defaults::MIN_MAX_HEADER_BYTES
                ),
            ));
        }
        limits.max_header_bytes = bytes.into_inner();
    }
    if let Some(bytes) = raw.max_body_bytes {
        limits.max_body_bytes = bytes;
    }

    let admin = match &raw.admin {
        None => Some(
            defaults::ADMIN
                .parse::<SocketAddr>()
                .expect("the default admin address parses"),
        ),
        Some(value) if value.get_ref() == "off" => None,
        Some(value) => Some(value.get_ref().parse().map_err(|_| {
            errors.at(
                value.span(),
                format!(
                    "bad admin address {:?}; write IP:PORT, e.g. \"127.0.0.1:9901\", or \"off\"",
                    value.get_ref()
                ),
            )
        })?),
    };
    if let Some(admin) = admin
        && admin.port() != 0
        && listeners.iter().any(|l| l.address == admin)
    {
        return Err(errors.at(
            raw.admin.as_ref().map_or(0..0, |a| a.span()),
            format!("admin address {admin} is also a listener's; give the admin API its own port"),
        ));
    }
    let mut rate_limit = RateLimitConfig::default();
    if let Some(raw_limit) = raw.rate_limit {
        rate_limit.global = raw_limit.global.map(|r| rate(r, errors)).transpose()?;
        rate_limit.per_client = raw_limit.per_client.map(|r| rate(r, errors)).transpose()?;
        if let Some(n) = raw_limit.max_tracked_clients {
            if *n.get_ref() == 0 {
                return Err(errors.at(n.span(), "max_tracked_clients must be at least 1"));
            }
            rate_limit.max_tracked_clients = n.into_inner();
        }
    }

    let explain_ring_size = match raw.explain_ring_size {
        None => crate::explain::DEFAULT_EXPLAIN_RING_SIZE,
        Some(size) if *size.get_ref() > crate::explain::MAX_EXPLAIN_RING_SIZE => {
            return Err(errors.at(
                size.span(),
                format!(
                    "explain_ring_size must be at most {}; 0 turns explanations off",
                    crate::explain::MAX_EXPLAIN_RING_SIZE
                ),
            ));
        }
        Some(size) => size.into_inner(),
    };
    let trace = match raw.trace {
        None => None,
        Some(spanned) => {
            let span = spanned.span();
            let raw_trace = spanned.into_inner();
            let max_bytes = raw_trace.max_bytes.unwrap_or(defaults::TRACE_MAX_BYTES);
            let max_files = raw_trace.max_files.unwrap_or(defaults::TRACE_MAX_FILES);
            if max_bytes < defaults::TRACE_MIN_BYTES {
                return Err(errors.at(
                    span,
                    format!(
                        "trace.max_bytes must be at least {}",
                        defaults::TRACE_MIN_BYTES
                    ),
                ));
            }
            if max_files == 0 || max_files > defaults::TRACE_FILES_LIMIT {
                return Err(errors.at(
                    span,
                    format!(
                        "trace.max_files must be 1 to {} (the current file included)",
                        defaults::TRACE_FILES_LIMIT
                    ),
                ));
            }
            if raw_trace.path.as_os_str().is_empty() {
                return Err(errors.at(span, "trace.path must name a file"));
            }
            Some(TraceConfig {
                path: raw_trace.path,
                max_bytes,
                max_files,
            })
        }
    };

    let workers = match raw.workers {
        None => None,
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > defaults::MAX_WORKERS => {
            return Err(errors.at(
                n.span(),
                format!(
                    "workers must be 1 to {}; leave it out for one per CPU",
                    defaults::MAX_WORKERS
                ),
            ));
        }
        Some(n) => Some(n.into_inner()),
    };

    Ok(Config {
        listeners,
        pools,
        routes,
        limits,
        access_log: raw.access_log.unwrap_or_default(),
        shutdown_grace_ms: raw.shutdown_grace_ms.unwrap_or(defaults::SHUTDOWN_GRACE_MS),
        admin,
        rate_limit,
        explain_ring_size,
        trace,
        workers,
    })
}

fn rate(raw: Spanned<RawRate>, errors: &Errors<'_>) -> Result<Rate, ConfigError> {
    let span = raw.span();
    let raw = raw.into_inner();
    if raw.rate_per_s == 0 {
        return Err(errors.at(
            span,
            "rate_per_s must be at least 1; remove the limit to allow everything",
        ));
    }
    let burst = raw.burst.unwrap_or(raw.rate_per_s);
    if burst == 0 {
        return Err(errors.at(span, "burst must be at least 1"));
    }
    Ok(Rate {
        rate_per_s: raw.rate_per_s,
        burst,
    })
}

fn health_check(raw: RawHealthCheck, errors: &Errors<'_>) -> Result<HealthCheck, ConfigError> {
    let core = balancer_core::HealthCheckConfig::default();
    let path = match raw.path {
        Some(path) if !path.get_ref().starts_with('/') => {
            return Err(errors.at(
                path.span(),
                format!("health_check path {:?} must start with '/'", path.get_ref()),
            ));
        }
        Some(path) => {
            if path.get_ref().parse::<http::uri::PathAndQuery>().is_err() {
                return Err(errors.at(path.span(), "health_check path is not a valid URI path"));
            }
            path.into_inner()
        }
        None => "/".into(),
    };
    let at_least_1 = |value: Option<Spanned<u64>>, name: &str, default: u64| match value {
        Some(v) if *v.get_ref() == 0 => {
            Err(errors.at(v.span(), format!("{name} must be at least 1")))
        }
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    };
    let interval_ms = at_least_1(raw.interval_ms, "interval_ms", defaults::HEALTH_INTERVAL_MS)?;
    let timeout_ms = at_least_1(raw.timeout_ms, "timeout_ms", defaults::HEALTH_TIMEOUT_MS)?;
    let count = |value: Option<Spanned<u32>>, name: &str, default: u32| match value {
        Some(v) if *v.get_ref() == 0 => {
            Err(errors.at(v.span(), format!("{name} must be at least 1")))
        }
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    };
    let rise = count(raw.rise, "rise", core.rise)?;
    let fall = count(raw.fall, "fall", core.fall)?;
    let (min, max) = match raw.expected_status {
        None => defaults::HEALTH_EXPECTED_STATUS,
        Some(text) => parse_status_range(text.get_ref()).ok_or_else(|| {
            errors.at(
                text.span(),
                format!(
                    "bad expected_status {:?}; write one status (\"200\") or a range (\"200-399\") within 100-599",
                    text.get_ref()
                ),
            )
        })?,
    };
    Ok(HealthCheck {
        path,
        interval_ms,
        timeout_ms,
        rise,
        fall,
        expected_status_min: min,
        expected_status_max: max,
    })
}

/// `"200"` or `"200-399"`, within 100–599.
fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (low.trim().parse().ok()?, high.trim().parse().ok()?),
        None => {
            let status = text.trim().parse().ok()?;
            (status, status)
        }
    };
    ((100..=599).contains(&low) && (100..=599).contains(&high) && low <= high)
        .then_some((low, high))
}

fn outlier(
    raw: RawOutlier,
    errors: &Errors<'_>,
) -> Result<balancer_core::OutlierConfig, ConfigError> {
    let mut config = balancer_core::OutlierConfig::default();
    if let Some(n) = raw.consecutive_failures {
        if *n.get_ref() == 0 {
            return Err(errors.at(n.span(), "consecutive_failures must be at least 1"));
        }
        config.consecutive_failures = n.into_inner();
    }
    if let Some(ms) = raw.base_ejection_ms {
        config.base_ejection = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = raw.max_ejection_ms {
        config.max_ejection = std::time::Duration::from_millis(ms);
    }
    if let Some(p) = raw.max_ejected_percent {
        if *p.get_ref() > 100 {
            return Err(errors.at(p.span(), "max_ejected_percent must be 0-100"));
        }
        config.max_ejected_percent = p.into_inner();
    }
    Ok(config)
}

fn retry(
    raw: RawRetry,
    errors: &Errors<'_>,
) -> Result<Option<balancer_core::RetryConfig>, ConfigError> {
    use std::time::Duration;
    let mut config = balancer_core::RetryConfig::default();
    if let Some(n) = raw.max_retries {
        if *n.get_ref() > defaults::MAX_RETRIES_LIMIT {
            return Err(errors.at(
                n.span(),
                format!(
                    "max_retries must be at most {}: more tries only multiply an outage",
                    defaults::MAX_RETRIES_LIMIT
                ),
            ));
        }
        config.max_retries = n.into_inner();
    }
    if let Some(b) = raw.retry_non_idempotent {
        config.retry_non_idempotent = b;
    }
    if let Some(b) = raw.retry_on_503 {
        config.retry_on_503 = b;
    }
    if let Some(r) = raw.budget_ratio {
        if !(0.0..=10.0).contains(r.get_ref()) {
            return Err(errors.at(r.span(), "budget_ratio must be between 0.0 and 10.0"));
        }
        config.budget_ratio = r.into_inner();
    }
    if let Some(n) = raw.budget_min_per_s {
        config.budget_min_per_s = n;
    }
    if let Some(ms) = raw.budget_window_ms {
        if *ms.get_ref() == 0 {
            return Err(errors.at(ms.span(), "budget_window_ms must be at least 1"));
        }
        config.budget_window = Duration::from_millis(ms.into_inner());
    }
    if let Some(ms) = raw.backoff_base_ms {
        config.backoff_base = Duration::from_millis(ms);
    }
    if let Some(ms) = raw.backoff_max_ms {
        config.backoff_max = Duration::from_millis(ms);
    }
    Ok((config.max_retries > 0).then_some(config))
}

fn parse_listen_address(
    address: &Spanned<String>,
    errors: &Errors<'_>,
) -> Result<SocketAddr, ConfigError> {
    address.get_ref().parse().map_err(|_| {
        errors.at(
            address.span(),
            format!(
                "bad listen address {:?}; write IP:PORT, e.g. \"127.0.0.1:8080\" (host names are not resolved for listeners)",
                address.get_ref()
            ),
        )
    })
}

fn parse_policy(
    policy: Option<&Spanned<String>>,
    errors: &Errors<'_>,
) -> Result<PolicyKind, ConfigError> {
    match policy {
        None => Ok(PolicyKind::LeastPending),
        Some(policy) => policy
            .get_ref()
            .parse()
            .map_err(|err| errors.at(policy.span(), format!("{err}"))),
    }
}

fn pool_config(
    name: String,
    policy: PolicyKind,
    seed: Option<u64>,
    backends: Spanned<Vec<Spanned<RawBackend>>>,
    errors: &Errors<'_>,
) -> Result<PoolConfig, ConfigError> {
    if backends.get_ref().is_empty() {
        return Err(errors.at(
            backends.span(),
            format!("pool {name:?} has no backends; list at least one \"host:port\""),
        ));
    }
    let mut parsed = Vec::new();
    for backend in backends.into_inner() {
        let span = backend.span();
        let (address, weight) = match backend.into_inner() {
            RawBackend::Address(address) => (address, 1),
            RawBackend::Weighted(w) => (w.address, w.weight),
        };
        check_backend_address(&address).map_err(|why| {
            errors.at(
                span.clone(),
                format!("bad backend address {address:?}: {why}; write HOST:PORT, e.g. \"127.0.0.1:9001\""),
            )
        })?;
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(errors.at(
                span,
                format!("weight must be between 1 and {MAX_WEIGHT}, got {weight}"),
            ));
        }
        parsed.push(BackendConfig { address, weight });
    }
    Ok(PoolConfig {
        name,
        policy,
        seed: seed.unwrap_or(defaults::SEED),
        backends: parsed,
        connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
        response_header_timeout_ms: defaults::RESPONSE_HEADER_TIMEOUT_MS,
        idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
        max_idle_per_backend: defaults::MAX_IDLE_PER_BACKEND,
        max_in_flight: balancer_core::DEFAULT_MAX_IN_FLIGHT,
        max_pending_per_backend: None,
        request_timeout_ms: defaults::REQUEST_TIMEOUT_MS,
        health_check: None,
        outlier: None,
        // Retries are on by default (the core's defaults: 2 retries, idempotent methods,
        // connect/reset/timeout only, within a 20 % budget).
        retry: Some(balancer_core::RetryConfig::default()),
        slow_start: None,
        panic_threshold_percent: None,
    })
}

/// Accepts `IP:PORT`, `[IPv6]:PORT` and `name:PORT` (names are resolved when connecting).
fn check_backend_address(address: &str) -> Result<(), &'static str> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = address.rsplit_once(':').ok_or("missing :PORT")?;
    let port: u16 = port
        .parse()
        .map_err(|_| "the port is not a number 1-65535")?;
    if port == 0 {
        return Err("port 0 cannot be connected to");
    }
    let valid_name = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid_name {
        return Err("the host is neither an IP address nor a DNS name");
    }
    // Reject bogus forms such as "http://x:1" early: they would otherwise fail only at request time.
    if address.contains("//") {
        return Err("no scheme; write the address only");
    }
    format!("http://{address}/")
        .parse::<http::Uri>()
        .map(|_| ())
        .map_err(|_| "not a valid authority")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    #[test]
    fn minimal_file_makes_one_pool_and_a_catch_all_route() {
        let config = parse(
            "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n",
        )
        .unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.pools[0].backends.len(), 2);
        assert_eq!(config.pools[0].policy, PolicyKind::LeastPending);
        assert_eq!(config.routes.len(), 1);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err = parse(
            "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9001\"]\nlisten_port = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.toml:3:1: unknown field `listen_port`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_pool_in_route_is_an_error_at_its_place() {
        let err = parse(
            "listen = \"127.0.0.1:8080\"\n[pools.a]\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\npool = \"b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.toml:5:8: route refers to unknown pool \"b\""),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_are_reported() {
        let cases = [
            (
                "listen = \"localhost:80\"\nbackends = [\"a:1\"]",
                "bad listen address",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = []",
                "has no backends",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"nope\"]",
                "missing :PORT",
            ),
            (
                "[[listeners]]\naddress = \"127.0.0.1:80\"\n[[listeners]]\naddress = \"127.0.0.1:80\"\n[pools.p]\nbackends = [\"a:1\"]",
                "duplicate listener address",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\npolicy = \"fastest\"",
                "unknown policy",
            ),
            (
                "listen = \"127.0.0.1:80\"\n[pools.a]\nbackends = [\"a:1\"]\n[pools.b]\nbackends = [\"b:1\"]",
                "no [[routes]]",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\n[[routes]]\npool = \"default\"\nport = 81",
                "matches no listener",
            ),
            ("backends = [\"a:1\"]", "nothing to listen on"),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [{ address = \"a:1\", weight = 0 }]",
                "weight",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [{ adress = \"a:1\" }]",
                "unknown field `adress`",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [3]",
                "expected \"host:port\"",
            ),
            (
                "listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\nmax_header_bytes = 100",
                "at least 8192",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{text:?} gave {err:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn issue_6_keys_parse_with_their_defaults() {
        let config = parse(
            r#"
listen = "127.0.0.1:8080"
admin = "127.0.0.1:9999"
[rate_limit]
global = { rate_per_s = 1000 }
per_client = { rate_per_s = 10, burst = 20 }
max_tracked_clients = 500
[pools.web]
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
max_pending_per_backend = 100
request_timeout_ms = 5000
panic_threshold_percent = 50
health_check = { path = "/healthz", expected_status = "200" }
outlier = { consecutive_failures = 3 }
retry = { retry_on_503 = true }
slow_start = { window_ms = 30000 }
[[routes]]
pool = "web"
rate_limit = { rate_per_s = 5 }
"#,
        )
        .unwrap();
        assert_eq!(config.admin, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(
            config.rate_limit.global,
            Some(Rate {
                rate_per_s: 1000,
                burst: 1000
            })
        );
        assert_eq!(config.rate_limit.max_tracked_clients, 500);
        let pool = &config.pools[0];
        assert_eq!(pool.max_pending_per_backend, Some(100));
        assert_eq!(pool.request_timeout_ms, 5000);
        assert_eq!(pool.panic_threshold_percent, Some(50));
        let check = pool.health_check.as_ref().unwrap();
        assert_eq!(check.path, "/healthz");
        assert_eq!(
            (check.expected_status_min, check.expected_status_max),
            (200, 200)
        );
        assert_eq!((check.interval_ms, check.rise, check.fall), (2000, 2, 3));
        assert_eq!(pool.outlier.unwrap().consecutive_failures, 3);
        assert_eq!(pool.outlier.unwrap().max_ejected_percent, 50);
        let retry = pool.retry.unwrap();
        assert!(retry.retry_on_503 && !retry.retry_non_idempotent);
        assert_eq!(retry.max_retries, 2);
        assert_eq!(pool.slow_start.unwrap().min_weight_percent, 10);
        assert_eq!(config.routes[0].rate_limit.unwrap().burst, 5);

        let defaults = parse("listen = \"127.0.0.1:8080\"\nbackends = [\"a:1\"]\n").unwrap();
        assert_eq!(defaults.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert!(
            defaults.pools[0].retry.is_some(),
            "retries are on by default"
        );
        assert!(defaults.pools[0].outlier.is_none() && defaults.pools[0].health_check.is_none());
        let off = parse(
            "listen = \"127.0.0.1:8080\"\nadmin = \"off\"\n[pools.p]\nbackends = [\"a:1\"]\nretry = { max_retries = 0 }\n",
        )
        .unwrap();
        assert_eq!(off.admin, None);
        assert!(off.pools[0].retry.is_none());
    }

    #[test]
    fn issue_6_keys_are_validated() {
        let pool = "listen = \"127.0.0.1:80\"\n[pools.p]\nbackends = [\"a:1\"]\n";
        let cases = [
            (
                "health_check = { expected_status = \"600\" }",
                "bad expected_status",
            ),
            (
                "health_check = { path = \"healthz\" }",
                "must start with '/'",
            ),
            (
                "health_check = { interval_ms = 0 }",
                "interval_ms must be at least 1",
            ),
            ("health_check = { rise = 0 }", "rise must be at least 1"),
            ("outlier = { max_ejected_percent = 101 }", "0-100"),
            ("outlier = { consecutive_failures = 0 }", "at least 1"),
            ("retry = { max_retries = 11 }", "at most 10"),
            ("retry = { budget_ratio = -1.0 }", "budget_ratio"),
            ("retry = { tries = 3 }", "unknown field `tries`"),
            ("max_pending_per_backend = 0", "at least 1"),
            ("request_timeout_ms = 0", "at least 1"),
            ("panic_threshold_percent = 101", "0-100"),
            ("slow_start = { window_ms = 0 }", "window_ms"),
            (
                "slow_start = { window_ms = 10, min_weight_percent = 0 }",
                "1-100",
            ),
        ];
        for (line, expected) in cases {
            let text = format!("{pool}{line}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{line:?} gave {err:?}, expected {expected:?}"
            );
            assert!(
                err.starts_with("test.toml:4:"),
                "{line:?} gave {err:?}: no line 4"
            );
        }
        let top = [
            ("admin = \"localhost:1\"", "bad admin address"),
            ("admin = \"127.0.0.1:80\"", "also a listener's"),
            (
                "rate_limit = { per_client = { rate_per_s = 0 } }",
                "rate_per_s must be at least 1",
            ),
            ("rate_limit = { max_tracked_clients = 0 }", "at least 1"),
            (
                "explain_ring_size = 2000000",
                "explain_ring_size must be at most",
            ),
            (
                "trace = { path = \"t\", max_bytes = 10 }",
                "max_bytes must be at least 1024",
            ),
            (
                "trace = { path = \"t\", max_files = 0 }",
                "max_files must be 1 to 100",
            ),
            ("trace = { path = \"\" }", "trace.path must name a file"),
            ("workers = 0", "workers must be 1 to 256"),
            ("workers = 257", "workers must be 1 to 256"),
            ("trace = { max_files = 2 }", "missing field `path`"),
        ];
        for (line, expected) in top {
            let text = format!("listen = \"127.0.0.1:80\"\n{line}\nbackends = [\"a:1\"]\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{line:?} gave {err:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn explain_and_trace_defaults_and_values() {
        let plain = parse("listen = \"127.0.0.1:80\"\nbackends = [\"a:1\"]\n").unwrap();
        assert_eq!(plain.explain_ring_size, 4096);
        assert_eq!(plain.workers, None);
        assert!((1..=defaults::MAX_WORKERS).contains(&plain.worker_count()));
        assert_eq!(plain.trace, None);
        let set = parse(
            "listen = \"127.0.0.1:80\"\nexplain_ring_size = 0\nbackends = [\"a:1\"]\n\
             [trace]\npath = \"/tmp/t\"\n",
        )
        .unwrap();
        assert_eq!(set.explain_ring_size, 0);
        let four = parse("listen = \"127.0.0.1:80\"\nworkers = 4\nbackends = [\"a:1\"]\n").unwrap();
        assert_eq!((four.workers, four.worker_count()), (Some(4), 4));
        assert_eq!(
            set.trace,
            Some(TraceConfig {
                path: "/tmp/t".into(),
                max_bytes: 100 * 1024 * 1024,
                max_files: 3,
            })
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
