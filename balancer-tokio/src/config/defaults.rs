//! Default values and bounds of the settings, each with the reason for its size.

/// Longest a client may take to send a request's headers. Slowloris protection; 10 s is
/// generous for any real client on a slow link.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// Default `body_read_timeout_ms`: as the header timeout, a client that sends nothing for 10 s
/// is not uploading; it should not hold a backend connection.
pub const BODY_READ_TIMEOUT_MS: u64 = 10_000;
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
/// Longest a backend may leave a response body without a byte once it has begun (nginx's
/// `proxy_read_timeout`, 60 s): a backend that stalls mid-body would otherwise hold the client's
/// connection, the backend's, and a pending slot in the core for as long as the client waits.
pub const RESPONSE_BODY_IDLE_TIMEOUT_MS: u64 = 60_000;
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
/// Default `explain_ring_size`: 4096 tries is the last second or so at a few thousand
/// requests per second, about 1.5 MiB (an entry is under 400 bytes).
pub const EXPLAIN_RING_SIZE: usize = 4096;
/// Largest `explain_ring_size` accepted: 2²⁰ entries is about 400 MiB, more than any operator
/// should spend on explanations.
pub const MAX_EXPLAIN_RING_SIZE: usize = 1 << 20;
