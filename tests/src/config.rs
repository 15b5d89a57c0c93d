//! A typed builder of the TOML text the balancer reads, so that tests name config keys instead
//! of writing TOML by hand.
//!
//! Key names and forms are those of docs/configuration.md; the
//! text is written by the `toml` crate, which quotes strings. Only the keys the tests use are
//! here: a test that needs another adds it, and a test that feeds deliberately bad TOML writes
//! it literally.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use balancer_tokio::DemoBackend;
use toml::{Table, Value};

use crate::{CountingBackend, RawBackend};

/// An integer as TOML has it (i64); the tests' numbers are small, so a larger one is a mistake.
fn integer<N>(value: N) -> Value
where
    N: TryInto<i64> + Copy + fmt::Display,
{
    Value::Integer(
        value
            .try_into()
            .unwrap_or_else(|_| panic!("{value} does not fit a TOML integer")),
    )
}

/// Setters `fn key(self, value) -> Self` for keys whose value is a number, a string or a bool.
macro_rules! keys {
    ($($(#[$doc:meta])* $key:ident: $kind:ident $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $key(mut self, value: $ty) -> Self {
                self.table.insert(stringify!($key).into(), keys!(@value $kind value));
                self
            }
        )*
    };
    (@value int $value:ident) => { integer($value) };
    (@value string $value:ident) => { Value::String($value.to_string()) };
    (@value bool $value:ident) => { Value::Boolean($value) };
}

/// A whole config file; `Display` writes its TOML text.
///
/// [`ConfigBuilder::new`] puts the admin listener on a free port (the default 9901 would clash
/// between tests running at once) and turns the access log off (it would bury a failing
/// test's output).
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    table: Table,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder::new()
    }
}

impl ConfigBuilder {
    /// No listener or backend yet; admin on a free loopback port, access log off.
    pub fn new() -> Self {
        ConfigBuilder {
            table: Table::new(),
        }
        .admin("127.0.0.1:0")
        .access_log("off")
    }

    /// `listen = "127.0.0.1:0"`: one listener on a free loopback port.
    pub fn listen_any(self) -> Self {
        self.listen("127.0.0.1:0")
    }

    keys! {
        /// `listen = "address"`: the one listener.
        listen: string impl fmt::Display;
        /// `admin = "address"`, or `"off"`.
        admin: string &str;
        /// `access_log = "json" | "text" | "off"`.
        access_log: string &str;
        /// `workers = N`: traffic threads.
        workers: int usize;
        /// `shutdown_grace_ms = N`.
        shutdown_grace_ms: int u64;
        /// `header_read_timeout_ms = N`.
        header_read_timeout_ms: int u64;
        /// `body_read_timeout_ms = N`.
        body_read_timeout_ms: int u64;
        /// `max_header_bytes = N`.
        max_header_bytes: int usize;
        /// `max_body_bytes = N`.
        max_body_bytes: int usize;
        /// `max_connections = N`, for every listener.
        max_connections: int usize;
        /// `explain_ring_size = N`.
        explain_ring_size: int usize;
        /// `journal_size = N`: each pool keeps a journal of its core's calls.
        journal_size: int usize;
        /// `admin_token_file = "FILE"`: the admin API's bearer token.
        admin_token_file: string &str;
        /// `policy = "name"` of the default pool (the one top-level `backends` make).
        policy: string &str;
    }

    /// Top-level `hash = { key, load_factor }` of the default pool (consistent-hash).
    pub fn hash(mut self, key: &str, load_factor: Option<f64>) -> Self {
        self.table
            .insert("hash".into(), hash_table(key, load_factor));
        self
    }

    /// `trusted_proxies = ["CIDR", ...]`.
    pub fn trusted_proxies(mut self, nets: &[&str]) -> Self {
        let list = nets
            .iter()
            .map(|n| Value::String((*n).to_owned()))
            .collect();
        self.table
            .insert("trusted_proxies".into(), Value::Array(list));
        self
    }

    /// Top-level `backends = [...]`: the default pool, named "default".
    pub fn backends<B: AsBackend>(mut self, backends: impl IntoIterator<Item = B>) -> Self {
        self.table.insert("backends".into(), backend_list(backends));
        self
    }

    /// One more `[[listeners]]` entry, `{ name, address }`.
    pub fn listener(mut self, name: &str, address: impl fmt::Display) -> Self {
        let mut listener = Table::new();
        listener.insert("name".into(), name.into());
        listener.insert("address".into(), address.to_string().into());
        push(&mut self.table, "listeners", listener);
        self
    }

    /// `[pools.name]`, built by `pool` from an empty one.
    pub fn pool(mut self, name: &str, pool: impl FnOnce(Pool) -> Pool) -> Self {
        let built = pool(Pool::default());
        let pools = self
            .table
            .entry("pools")
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(pools) = pools else {
            unreachable!("pools is always a table")
        };
        pools.insert(name.into(), Value::Table(built.table));
        self
    }

    /// One more `[[routes]]` entry (routes match in the order they are added).
    pub fn route(mut self, route: impl FnOnce(Route) -> Route) -> Self {
        push(&mut self.table, "routes", route(Route::default()).table);
        self
    }

    /// `[rate_limit]`.
    pub fn rate_limit(mut self, limits: impl FnOnce(RateLimit) -> RateLimit) -> Self {
        let built = limits(RateLimit::default());
        self.table
            .insert("rate_limit".into(), Value::Table(built.table));
        self
    }

    /// `[trace]` recording to `path`, with the rest from `trace`.
    pub fn trace(mut self, path: &Path, trace: impl FnOnce(Trace) -> Trace) -> Self {
        let mut built = Trace::default();
        built
            .table
            .insert("path".into(), path.display().to_string().into());
        self.table
            .insert("trace".into(), Value::Table(trace(built).table));
        self
    }
}

impl fmt::Display for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = toml::to_string(&self.table).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// `{ key = "...", load_factor = F }`; no factor writes "unbounded".
fn hash_table(key: &str, load_factor: Option<f64>) -> Value {
    let mut table = Table::new();
    table.insert("key".into(), Value::String(key.to_owned()));
    table.insert(
        "load_factor".into(),
        load_factor.map_or_else(|| Value::String("unbounded".into()), Value::Float),
    );
    Value::Table(table)
}

fn push(table: &mut Table, key: &str, entry: Table) {
    let list = table.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = list else {
        unreachable!("{key} is always an array")
    };
    list.push(Value::Table(entry));
}

fn backend_list<B: AsBackend>(backends: impl IntoIterator<Item = B>) -> Value {
    Value::Array(
        backends
            .into_iter()
            .map(|b| b.backend().into_value())
            .collect(),
    )
}

/// `{ rate_per_s, burst }`.
fn rate(rate_per_s: u32, burst: u32) -> Value {
    let mut rate = Table::new();
    rate.insert("rate_per_s".into(), integer(rate_per_s));
    rate.insert("burst".into(), integer(burst));
    Value::Table(rate)
}

/// One entry of a `backends` list: `"host:port"`, or `{ address, weight }` once weighted.
#[derive(Clone, Debug)]
pub struct Backend {
    address: String,
    weight: Option<u32>,
}

impl Backend {
    /// The backend at `address` (anything that prints as `host:port`).
    pub fn at(address: impl fmt::Display) -> Backend {
        Backend {
            address: address.to_string(),
            weight: None,
        }
    }

    /// With `weight = N`.
    pub fn weight(self, weight: u32) -> Backend {
        Backend {
            weight: Some(weight),
            ..self
        }
    }

    fn into_value(self) -> Value {
        match self.weight {
            None => Value::String(self.address),
            Some(weight) => {
                let mut entry = Table::new();
                entry.insert("address".into(), self.address.into());
                entry.insert("weight".into(), integer(weight));
                Value::Table(entry)
            }
        }
    }
}

/// What can stand in a `backends` list: the test servers, addresses, and [`Backend`].
pub trait AsBackend {
    /// This one as a list entry.
    fn backend(&self) -> Backend;
}

impl AsBackend for Backend {
    fn backend(&self) -> Backend {
        self.clone()
    }
}

impl<T: AsBackend + ?Sized> AsBackend for &T {
    fn backend(&self) -> Backend {
        (**self).backend()
    }
}

impl AsBackend for SocketAddr {
    fn backend(&self) -> Backend {
        Backend::at(self)
    }
}

impl AsBackend for str {
    fn backend(&self) -> Backend {
        Backend::at(self)
    }
}

impl AsBackend for String {
    fn backend(&self) -> Backend {
        Backend::at(self)
    }
}

impl AsBackend for DemoBackend {
    fn backend(&self) -> Backend {
        Backend::at(self.local_addr())
    }
}

impl AsBackend for RawBackend {
    fn backend(&self) -> Backend {
        Backend::at(self.address())
    }
}

impl AsBackend for CountingBackend {
    fn backend(&self) -> Backend {
        Backend::at(self.local_addr())
    }
}

/// A `[pools.name]` table.
#[derive(Default)]
pub struct Pool {
    table: Table,
}

impl Pool {
    /// `backends = [...]`.
    pub fn backends<B: AsBackend>(mut self, backends: impl IntoIterator<Item = B>) -> Self {
        self.table.insert("backends".into(), backend_list(backends));
        self
    }

    keys! {
        /// `policy = "least-pending" | "round-robin" | ...`.
        policy: string &str;
        /// `max_in_flight = N`.
        max_in_flight: int u32;
        /// `max_pending_per_backend = N`.
        max_pending_per_backend: int u32;
        /// `connect_timeout_ms = N`.
        connect_timeout_ms: int u64;
        /// `response_header_timeout_ms = N`.
        response_header_timeout_ms: int u64;
        /// `response_body_idle_timeout_ms = N`.
        response_body_idle_timeout_ms: int u64;
        /// `request_timeout_ms = N`.
        request_timeout_ms: int u64;
        /// `idle_timeout_ms = N`.
        idle_timeout_ms: int u64;
        /// `panic_threshold_percent = N`.
        panic_threshold_percent: int u8;
    }

    /// `hash = { key, load_factor }` (consistent-hash).
    pub fn hash(mut self, key: &str, load_factor: Option<f64>) -> Self {
        self.table
            .insert("hash".into(), hash_table(key, load_factor));
        self
    }

    /// `outlier = { ... }`.
    pub fn outlier(mut self, outlier: impl FnOnce(Outlier) -> Outlier) -> Self {
        let built = outlier(Outlier::default());
        self.table
            .insert("outlier".into(), Value::Table(built.table));
        self
    }

    /// `health_check = { ... }`.
    pub fn health_check(mut self, check: impl FnOnce(HealthCheck) -> HealthCheck) -> Self {
        let built = check(HealthCheck::default());
        self.table
            .insert("health_check".into(), Value::Table(built.table));
        self
    }

    /// `retry = { ... }`.
    pub fn retry(mut self, retry: impl FnOnce(Retry) -> Retry) -> Self {
        let built = retry(Retry::default());
        self.table.insert("retry".into(), Value::Table(built.table));
        self
    }
}

/// A pool's `outlier = { ... }` (passive ejection).
#[derive(Default)]
pub struct Outlier {
    table: Table,
}

impl Outlier {
    keys! {
        /// `consecutive_failures = N`.
        consecutive_failures: int u32;
        /// `base_ejection_ms = N`.
        base_ejection_ms: int u64;
        /// `max_ejection_ms = N`.
        max_ejection_ms: int u64;
    }
}

/// A pool's `health_check = { ... }` (active probes).
#[derive(Default)]
pub struct HealthCheck {
    table: Table,
}

impl HealthCheck {
    keys! {
        /// `path = "/..."`.
        path: string &str;
        /// `interval_ms = N`.
        interval_ms: int u64;
        /// `timeout_ms = N`.
        timeout_ms: int u64;
        /// `rise = N`.
        rise: int u32;
        /// `fall = N`.
        fall: int u32;
        /// `expected_status = "NNN"` or `"NNN-MMM"`.
        expected_status: string &str;
    }
}

/// A pool's `retry = { ... }`.
#[derive(Default)]
pub struct Retry {
    table: Table,
}

impl Retry {
    keys! {
        /// `max_retries = N`.
        max_retries: int u32;
        /// `backoff_base_ms = N`.
        backoff_base_ms: int u64;
        /// `backoff_max_ms = N`.
        backoff_max_ms: int u64;
        /// `retry_on_503 = true | false`.
        retry_on_503: bool bool;
        /// `retry_non_idempotent = true | false`.
        retry_non_idempotent: bool bool;
    }

    /// `retry_on_status = [NNN, ...]`.
    pub fn retry_on_status(mut self, statuses: &[u16]) -> Self {
        let list = statuses.iter().map(|&s| integer(s)).collect();
        self.table
            .insert("retry_on_status".into(), Value::Array(list));
        self
    }
}

/// One `[[routes]]` entry.
#[derive(Default)]
pub struct Route {
    table: Table,
}

impl Route {
    keys! {
        /// `name = "..."`.
        name: string &str;
        /// `host = "exact.example"` or `"*.example"`.
        host: string &str;
        /// `path_prefix = "/..."`.
        path_prefix: string &str;
        /// `port = N`: the listener port it matches.
        port: int u16;
        /// `pool = "name"`.
        pool: string &str;
    }

    /// `rate_limit = { rate_per_s, burst }` of this route.
    pub fn rate_limit(mut self, rate_per_s: u32, burst: u32) -> Self {
        self.table
            .insert("rate_limit".into(), rate(rate_per_s, burst));
        self
    }
}

/// The `[rate_limit]` table.
#[derive(Default)]
pub struct RateLimit {
    table: Table,
}

impl RateLimit {
    /// `global = { rate_per_s, burst }`.
    pub fn global(mut self, rate_per_s: u32, burst: u32) -> Self {
        self.table.insert("global".into(), rate(rate_per_s, burst));
        self
    }

    /// `per_client = { rate_per_s, burst }`.
    pub fn per_client(mut self, rate_per_s: u32, burst: u32) -> Self {
        self.table
            .insert("per_client".into(), rate(rate_per_s, burst));
        self
    }

    keys! {
        /// `max_tracked_clients = N`.
        max_tracked_clients: int usize;
    }
}

/// The `[trace]` table (its `path` is given to [`ConfigBuilder::trace`]).
#[derive(Default)]
pub struct Trace {
    table: Table,
}

impl Trace {
    keys! {
        /// `max_bytes = N` per file.
        max_bytes: int u64;
        /// `max_files = N`.
        max_files: int u32;
    }
}
