//! Semantic validation: the raw file turned into [`Config`], or an error that names the place
//! and says what to write instead.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use balancer_core::{MAX_WEIGHT, PolicyKind};
use toml::Spanned;

use super::ConfigError;
use super::defaults;
use super::host::HostPattern;
use super::raw::*;
use super::types::*;

/// Shortest admin token accepted: 16 characters of hex are 64 bits, beyond guessing.
const MIN_ADMIN_TOKEN_BYTES: usize = 16;

pub(super) struct Errors<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a str,
}

impl Errors<'_> {
    pub(super) fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
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
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Largest admin token file read: a token is tens of bytes, and `admin_token_file =
/// "/dev/zero"` must be an error, not an endless read.
const MAX_ADMIN_TOKEN_FILE_BYTES: u64 = 4096;

/// The text of `path`, refused when longer than `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "it is longer than {limit} bytes; a token is one line"
        )));
    }
    Ok(text)
}

/// Start creates `path` (a log or trace file): its directory must exist, or `check` would pass a
/// config that cannot start.
fn check_directory_of(
    key: &str,
    path: &Path,
    span: Range<usize>,
    errors: &Errors<'_>,
) -> Result<(), ConfigError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.is_dir() {
        return Ok(());
    }
    Err(errors.at(
        span,
        format!(
            "{key}: the directory {} does not exist; create it (e.g. `mkdir -p {}`) or choose another path",
            parent.display(),
            parent.display()
        ),
    ))
}

pub(super) fn validate(raw: RawConfig, errors: &Errors<'_>) -> Result<Config, ConfigError> {
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
        let mut pool = pool_config("default".into(), policy, None, backends, errors)?;
        pool.hash = parse_hash(policy, raw.hash, raw.policy.as_ref(), errors)?;
        pools.push(pool);
    } else if let Some(policy) = &raw.policy {
        return Err(errors.at(
            policy.span(),
            "top-level `policy` applies to the top-level `backends`, which is missing; set `policy` inside a [pools.NAME] table instead",
        ));
    } else if let Some(hash) = &raw.hash {
        return Err(errors.at(
            hash.span(),
            "top-level `hash` applies to the top-level `backends`, which is missing; set `hash` inside a [pools.NAME] table instead",
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
        pool.hash = parse_hash(policy, raw_pool.hash, raw_pool.policy.as_ref(), errors)?;
        if let Some(ms) = raw_pool.connect_timeout_ms {
            pool.connect_timeout_ms = ms;
        }
        if let Some(ms) = raw_pool.response_header_timeout_ms {
            pool.response_header_timeout_ms = ms;
        }
        if let Some(ms) = raw_pool.response_body_idle_timeout_ms {
            pool.response_body_idle_timeout_ms = ms;
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
        if let Some(statuses) = raw_pool.failure_status {
            pool.failure_status = status_set(statuses, "failure_status", errors)?;
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
    if let Some(ms) = raw.body_read_timeout_ms {
        if *ms.get_ref() == 0 {
            return Err(errors.at(ms.span(), "body_read_timeout_ms must be at least 1"));
        }
        limits.body_read_timeout_ms = ms.into_inner();
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
    let admin_token = match raw.admin_token_file {
        None => None,
        Some(file) => {
            let span = file.span();
            let path = file.into_inner();
            let token = read_bounded(&path, MAX_ADMIN_TOKEN_FILE_BYTES).map_err(|err| {
                errors.at(
                    span.clone(),
                    format!(
                        "admin_token_file {}: cannot read it ({err}); write the token into that file",
                        path.display()
                    ),
                )
            })?;
            let token = token.trim().to_owned();
            if token.len() < MIN_ADMIN_TOKEN_BYTES || token.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(errors.at(
                    span,
                    format!(
                        "admin_token_file {}: the token must be at least {MIN_ADMIN_TOKEN_BYTES} visible ASCII characters (e.g. `openssl rand -hex 32`)",
                        path.display()
                    ),
                ));
            }
            Some(token)
        }
    };
    if let Some(admin) = admin
        && !admin.ip().is_loopback()
        && admin_token.is_none()
        && raw.admin_unauthenticated != Some(true)
    {
        return Err(errors.at(
            raw.admin.as_ref().map_or(0..0, |a| a.span()),
            format!(
                "admin address {admin} is reachable beyond this machine, and the admin API can drain, reload and read the config: set admin_token_file = \"FILE\" (a bearer token), or bind it to 127.0.0.1, or, if a firewall or a loopback-only port publication already guards it, say so with admin_unauthenticated = true"
            ),
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
        None => defaults::EXPLAIN_RING_SIZE,
        Some(size) if *size.get_ref() > defaults::MAX_EXPLAIN_RING_SIZE => {
            return Err(errors.at(
                size.span(),
                format!(
                    "explain_ring_size must be at most {}; 0 turns explanations off",
                    defaults::MAX_EXPLAIN_RING_SIZE
                ),
            ));
        }
        Some(size) => size.into_inner(),
    };
    let journal_size = match raw.journal_size {
        None => 0,
        Some(size) if *size.get_ref() > balancer_core::journal::MAX_JOURNAL_ENTRIES => {
            return Err(errors.at(
                size.span(),
                format!(
                    "journal_size must be at most {}; 0 (the default) keeps no journal",
                    balancer_core::journal::MAX_JOURNAL_ENTRIES
                ),
            ));
        }
        Some(size) => size.into_inner(),
    };
    let access_log_path = match raw.access_log_path {
        None => None,
        Some(path) => {
            let span = path.span();
            let path = path.into_inner();
            if path.as_os_str().is_empty() {
                return Err(errors.at(
                    span,
                    "access_log_path must name a file; leave it out to log to stdout",
                ));
            }
            check_directory_of("access_log_path", &path, span, errors)?;
            Some(path)
        }
    };
    let trusted_proxies = match raw.trusted_proxies {
        None => None,
        Some(list) => {
            let span = list.span();
            let mut nets = Vec::new();
            for text in list.into_inner() {
                let net = text
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        errors.at(
                            span.clone(),
                            format!(
                                "trusted_proxies: {text:?} is not an address or a CIDR block; write e.g. \"10.0.0.0/8\" or \"192.0.2.7\""
                            ),
                        )
                    })?;
                nets.push(net);
            }
            Some(nets)
        }
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
            let path_span = raw_trace.path.span();
            let path = raw_trace.path.into_inner();
            if path.as_os_str().is_empty() {
                return Err(errors.at(path_span, "trace.path must name a file"));
            }
            check_directory_of("trace.path", &path, path_span, errors)?;
            Some(TraceConfig {
                path,
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
        access_log_path,
        trusted_proxies,
        admin_token,
        shutdown_grace_ms: raw.shutdown_grace_ms.unwrap_or(defaults::SHUTDOWN_GRACE_MS),
        admin,
        rate_limit,
        explain_ring_size,
        journal_size,
        trace,
        workers,
        path_normalization: raw
            .path_normalization
            .map_or_else(PathNormalization::default, |n| {
                let all = PathNormalization::default();
                PathNormalization {
                    decode_unreserved: n.decode_unreserved.unwrap_or(all.decode_unreserved),
                    merge_slashes: n.merge_slashes.unwrap_or(all.merge_slashes),
                    remove_dot_segments: n.remove_dot_segments.unwrap_or(all.remove_dot_segments),
                }
            }),
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
    if let Some(statuses) = raw.retry_on_status {
        config.retry_on_status = status_set(statuses, "retry_on_status", errors)?;
    }
    // The older flag, still read: the same as listing 503.
    if raw.retry_on_503 == Some(true) {
        let _ = config.retry_on_status.insert(503);
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

fn status_set(
    statuses: Spanned<Vec<u16>>,
    key: &str,
    errors: &Errors<'_>,
) -> Result<balancer_core::StatusSet, ConfigError> {
    let span = statuses.span();
    balancer_core::StatusSet::from_codes(&statuses.into_inner())
        .map_err(|e| errors.at(span, format!("{key}: {e}, e.g. {key} = [502, 503, 504]")))
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
        response_body_idle_timeout_ms: defaults::RESPONSE_BODY_IDLE_TIMEOUT_MS,
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
        failure_status: balancer_core::StatusSet::class(5),
        hash: None,
    })
}

/// The `hash` table of a pool: required by consistent-hash, refused by other policies.
fn parse_hash(
    policy: PolicyKind,
    hash: Option<Spanned<RawHash>>,
    policy_key: Option<&Spanned<String>>,
    errors: &Errors<'_>,
) -> Result<Option<HashConfig>, ConfigError> {
    let Some(hash) = hash else {
        if policy == PolicyKind::ConsistentHash {
            let span = policy_key.map_or(0..0, Spanned::span);
            return Err(errors.at(
                span,
                "consistent-hash needs the key to hash: add e.g. `hash = { key = \"header:x-user-id\" }` (or cookie:NAME, query:NAME, path, client-ip)",
            ));
        }
        return Ok(None);
    };
    let span = hash.span();
    if policy != PolicyKind::ConsistentHash {
        return Err(errors.at(
            span,
            format!("`hash` is for policy = \"consistent-hash\"; this pool's policy is {policy}: remove `hash` or change the policy"),
        ));
    }
    let hash = hash.into_inner();
    let key_span = hash.key.span();
    let key_text = hash.key.into_inner();
    let named = |prefix: &str| -> Option<String> {
        key_text
            .strip_prefix(prefix)
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
    };
    let key = if let Some(name) = named("header:") {
        let name =
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                errors.at(
                    key_span.clone(),
                    format!("`{name}` is not a header name; write e.g. key = \"header:x-user-id\""),
                )
            })?;
        HashKeySource::Header(name)
    } else if let Some(name) = named("cookie:") {
        HashKeySource::Cookie(name)
    } else if let Some(name) = named("query:") {
        HashKeySource::Query(name)
    } else if key_text == "path" {
        HashKeySource::Path
    } else if key_text == "client-ip" {
        HashKeySource::ClientIp
    } else {
        return Err(errors.at(
            key_span,
            format!("unknown hash key {key_text:?}; write one of \"header:NAME\", \"cookie:NAME\", \"query:NAME\", \"path\", \"client-ip\""),
        ));
    };
    let load_factor = match hash.load_factor {
        None => Some(balancer_core::DEFAULT_HASH_LOAD_FACTOR),
        Some(value) => {
            let value_span = value.span();
            let factor = match value.into_inner() {
                toml::Value::String(word) if word == "unbounded" => None,
                toml::Value::Float(f) => Some(f),
                toml::Value::Integer(i) => Some(i as f64),
                _ => {
                    return Err(errors.at(
                        value_span,
                        "load_factor takes a number of at least 1.0 (e.g. load_factor = 1.25) or \"unbounded\"",
                    ));
                }
            };
            if let Some(f) = factor
                && !(1.0..=MAX_HASH_LOAD_FACTOR).contains(&f)
            {
                return Err(errors.at(
                    value_span,
                    format!("load_factor must be 1.0 to {MAX_HASH_LOAD_FACTOR} (1.0: perfectly even, larger: keys move less), or \"unbounded\"; got {f}"),
                ));
            }
            factor
        }
    };
    Ok(Some(HashConfig { key, load_factor }))
}

/// The largest bounded `load_factor`; beyond it write "unbounded".
const MAX_HASH_LOAD_FACTOR: f64 = 100.0;

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
