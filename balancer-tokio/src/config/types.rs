//! The validated configuration, section by section: plain data the rest of the crate reads.

use std::net::SocketAddr;
use std::path::PathBuf;

use balancer_core::PolicyKind;
use serde::Deserialize;

use super::defaults;
use super::host::HostPattern;

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
    /// Where the access log goes; `None`: stdout.
    pub access_log_path: Option<std::path::PathBuf>,
    /// Peers whose X-Forwarded-For and Forwarded are kept (appended to); from any other peer
    /// they are replaced. `None`: every peer's are kept.
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// Grace period for in-flight requests on shutdown, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// The admin listener's address; `None` when `admin = "off"`.
    pub admin: Option<SocketAddr>,
    /// The bearer token every admin request but `/healthz` must carry (read from
    /// `admin_token_file` when the config is loaded); `None`: none is asked for.
    pub admin_token: Option<String>,
    /// Global and per-client rate limits (per-route ones are on the routes).
    pub rate_limit: RateLimitConfig,
    /// Decision records kept for `GET /explain/{id}` (tries); 0 turns them off.
    pub explain_ring_size: usize,
    /// Core calls each pool's journal keeps (for comparing the proxy with the simulator);
    /// 0 keeps none.
    pub journal_size: usize,
    /// Traffic recording, if configured.
    pub trace: Option<TraceConfig>,
    /// Threads serving traffic, each with its own event loop and its own `SO_REUSEPORT`
    /// socket per listener; `None` means one per CPU this process may run on.
    pub workers: Option<usize>,
    /// How a path is put in normal form before routes match it.
    pub path_normalization: PathNormalization,
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
    /// Longest wait for the next bytes of a response body, in milliseconds; then the
    /// response is cut (the client's connection closed) and the try counts as timed out.
    pub response_body_idle_timeout_ms: u64,
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
    /// Backend response statuses that count as failures (ejection, failure counters).
    pub failure_status: balancer_core::StatusSet,
    /// consistent-hash: where the key comes from and the load bound. Set exactly when
    /// `policy` is consistent-hash.
    pub hash: Option<HashConfig>,
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
    /// Longest wait for the next bytes of a streamed request body, in milliseconds; then 408.
    pub body_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout_ms: defaults::HEADER_READ_TIMEOUT_MS,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            body_read_timeout_ms: defaults::BODY_READ_TIMEOUT_MS,
        }
    }
}

/// How access-log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// One space-separated line per request (fields: docs/operations.md, "Access log").
    #[default]
    Text,
    /// No access log.
    Off,
}

/// Where a consistent-hash pool takes each request's key from, and its load bound.
#[derive(Clone, Debug, PartialEq)]
pub struct HashConfig {
    /// The key's source.
    pub key: HashKeySource,
    /// A backend takes at most this many times its share of the requests in flight; `None`:
    /// unbounded.
    pub load_factor: Option<f64>,
}

/// The part of a request that is its consistent-hash key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKeySource {
    /// `header:NAME`: the first value of that header (NAME lower-cased).
    Header(http::HeaderName),
    /// `cookie:NAME`: the value of that cookie.
    Cookie(String),
    /// `query:NAME`: the value of that query parameter (as written, not percent-decoded).
    Query(String),
    /// `path`: the request's path, without the query.
    Path,
    /// `client-ip`: the client's address (the peer's, not X-Forwarded-For's).
    ClientIp,
}

impl HashKeySource {
    /// As written in the config.
    pub fn as_config(&self) -> String {
        match self {
            HashKeySource::Header(name) => format!("header:{name}"),
            HashKeySource::Cookie(name) => format!("cookie:{name}"),
            HashKeySource::Query(name) => format!("query:{name}"),
            HashKeySource::Path => "path".to_owned(),
            HashKeySource::ClientIp => "client-ip".to_owned(),
        }
    }
}

/// The steps that put a request's path in the normal form routes match against
/// (`path_normalization`); each is on by default. What is forwarded is always the path as the
/// client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathNormalization {
    /// Percent-escapes of unreserved characters decoded (`/%61dmin` is `/admin`).
    pub decode_unreserved: bool,
    /// Repeated slashes merged (`//admin` is `/admin`).
    pub merge_slashes: bool,
    /// `.` and `..` segments removed, never above the root (`/x/../admin` is `/admin`).
    pub remove_dot_segments: bool,
}

impl Default for PathNormalization {
    fn default() -> Self {
        PathNormalization {
            decode_unreserved: true,
            merge_slashes: true,
            remove_dot_segments: true,
        }
    }
}
