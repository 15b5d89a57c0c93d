//! The TOML configuration: its file format (serde, unknown keys rejected) and semantic validation.
//!
//! Two layers: `RawConfig` is exactly what the file says (with source spans so errors can point
//! at a line and column), [`Config`] is the validated form the server runs from.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    pool: Spanned<String>,
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

    Ok(Config {
        listeners,
        pools,
        routes,
        limits,
        access_log: raw.access_log.unwrap_or_default(),
        shutdown_grace_ms: raw.shutdown_grace_ms.unwrap_or(defaults::SHUTDOWN_GRACE_MS),
    })
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
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
