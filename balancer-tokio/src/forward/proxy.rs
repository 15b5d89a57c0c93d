//! The proxy of one config generation: routes, pools, limits, observers and background tasks,
//! built from a config (or from the previous generation on reload). Its requests are served by
//! `phases`, `tries` and `upgrade`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderValue;
use tokio::task::AbortHandle;

use crate::balance::pool::{Clock, Pool, PoolError, SharedPool};
use crate::config::{Config, Limits};
use crate::forward::ratelimit::RateLimits;
use crate::forward::routing::RouteTable;
use crate::observe::access_log::AccessLog;
use crate::observe::explain::ExplainRing;
use crate::observe::metrics::Metrics;
use crate::observe::trace::TraceSink;

/// How often the rate limiter's map of clients is trimmed of clients quiet long enough to be
/// back at a full burst (bounded memory either way; this only returns it sooner).
const RATE_LIMIT_MAINTENANCE: Duration = Duration::from_millis(250);

/// Where a request came in.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// The port of the listener that accepted it.
    pub listener_port: u16,
}

/// Everything needed to serve requests under one config generation; shared by all connections.
/// A reload builds a new one (keeping the pools' schedulers) and swaps it in atomically;
/// requests in flight finish on the one they started with.
pub struct Proxy {
    pub(super) routes: RouteTable,
    pub(super) route_labels: Vec<Arc<String>>,
    pub(super) pools: Vec<SharedPool>,
    pub(super) limits: Limits,
    pub(super) access_log: AccessLog,
    pub(super) rate_limits: Arc<RateLimits>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) config: Arc<Config>,
    pub(super) via_http1: HeaderValue,
    pub(super) via_http2: HeaderValue,
    pub(super) no_backend_label: Arc<String>,
    /// Decision records for `GET /explain/{id}`; `None` when `explain_ring_size = 0`.
    pub(super) explain: Option<Arc<ExplainRing>>,
    /// The traffic trace, when `[trace]` is configured.
    pub(super) trace: Option<Arc<TraceSink>>,
    /// Health checks and the maintenance tick of this generation, stopped when it is retired.
    pub(super) tasks: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    /// Builds the routing table and one pool (scheduler + client) per configured pool.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Proxy, PoolError> {
        let clock = Clock::new();
        let pools = config
            .pools
            .iter()
            .map(|p| {
                Pool::new(
                    p,
                    clock,
                    metrics.clone(),
                    config.worker_count(),
                    config.journal_size,
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limit, &config.routes));
        let explain = ExplainRing::new(config.explain_ring_size, config.worker_count());
        let trace = open_trace(config, &metrics)?;
        let access_log = open_access_log(config, &metrics)?;
        Ok(Proxy::assemble(
            config,
            pools,
            rate_limits,
            metrics,
            (access_log, explain, trace),
        ))
    }

    /// The proxy for a reloaded `config`: pools with the same name keep their scheduler (and
    /// so their backends' state) and connections; rate limiters are kept when unchanged.
    pub fn reload(config: &Config, previous: &Proxy) -> Result<Proxy, PoolError> {
        let clock = previous.pools.first().map_or_else(Clock::new, |p| p.clock);
        let pools = config
            .pools
            .iter()
            .map(|p| {
                match previous.pools.iter().find(|old| old.name == p.name) {
                    Some(old) => Pool::reload(p, old),
                    None => Pool::new(
                        p,
                        clock,
                        previous.metrics.clone(),
                        config.worker_count(),
                        config.journal_size,
                    ),
                }
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rate_limits = if previous
            .rate_limits
            .same_config(&config.rate_limit, &config.routes)
        {
            previous.rate_limits.clone()
        } else {
            Arc::new(RateLimits::new(&config.rate_limit, &config.routes))
        };
        // The ring and the trace writer are kept when their settings are unchanged, so that
        // explanations and the recording carry on across a reload.
        let explain = match &previous.explain {
            Some(ring) if ring.size() == config.explain_ring_size => Some(ring.clone()),
            _ => ExplainRing::new(config.explain_ring_size, config.worker_count()),
        };
        let trace = match &previous.trace {
            Some(sink) if Some(sink.config()) == config.trace.as_ref() => Some(sink.clone()),
            _ => open_trace(config, &previous.metrics)?,
        };
        // The same output keeps its writer (and its queue); a file is reopened, so that a
        // reload after logrotate writes to the new file.
        let access_log = if previous
            .access_log
            .same_output(config.access_log, config.access_log_path.as_deref())
        {
            previous.access_log.reopen();
            previous.access_log.clone()
        } else {
            open_access_log(config, &previous.metrics)?
        };
        Ok(Proxy::assemble(
            config,
            pools,
            rate_limits,
            previous.metrics.clone(),
            (access_log, explain, trace),
        ))
    }

    fn assemble(
        config: &Config,
        pools: Vec<SharedPool>,
        rate_limits: Arc<RateLimits>,
        metrics: Arc<Metrics>,
        (access_log, explain, trace): (AccessLog, Option<Arc<ExplainRing>>, Option<Arc<TraceSink>>),
    ) -> Proxy {
        Proxy {
            routes: RouteTable::new(&config.routes, config.path_normalization),
            route_labels: config
                .routes
                .iter()
                .map(|r| Arc::new(r.name.clone()))
                .collect(),
            pools,
            limits: config.limits,
            access_log,
            rate_limits,
            metrics,
            config: Arc::new(config.clone()),
            via_http1: HeaderValue::from_static("1.1 balancer"),
            via_http2: HeaderValue::from_static("2.0 balancer"),
            no_backend_label: Arc::new("-".into()),
            explain,
            trace,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Whether X-Forwarded-For and Forwarded from this peer are kept (`trusted_proxies`).
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.config
            .trusted_proxies
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|net| net.contains(&peer)))
    }

    /// The limits clients are held to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The access log.
    pub fn access_log(&self) -> &AccessLog {
        &self.access_log
    }

    /// The pools, in configuration order.
    pub fn pools(&self) -> &[SharedPool] {
        &self.pools
    }

    /// The config this generation serves.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The metrics (shared by every generation).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The rate limiters.
    pub fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }

    /// The decision-record ring, unless `explain_ring_size = 0`.
    pub fn explain(&self) -> Option<&Arc<ExplainRing>> {
        self.explain.as_ref()
    }

    /// The traffic trace, if recording.
    pub fn trace(&self) -> Option<&Arc<TraceSink>> {
        self.trace.as_ref()
    }

    /// Starts this generation's background work: active health checks of each pool that has
    /// them, each pool's timer (sleeping on the core's `next_timeout()` to end ejections), and
    /// the trimming of the rate limiter's client map.
    pub fn start_tasks(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for pool in &self.pools {
            if let Some(check) = &pool.health_check {
                tasks.push(
                    tokio::spawn(crate::balance::health::run(pool.clone(), check.clone()))
                        .abort_handle(),
                );
            }
        }
        for pool in &self.pools {
            tasks.push(tokio::spawn(pool.clone().run_timer()).abort_handle());
        }
        let rate_limits = self.rate_limits.clone();
        tasks.push(
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RATE_LIMIT_MAINTENANCE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    rate_limits.maintain();
                }
            })
            .abort_handle(),
        );
    }

    /// Stops this generation's background work (a newer one has taken over, or shutdown).
    pub fn retire(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
        }
    }
}

fn open_access_log(config: &Config, metrics: &Arc<Metrics>) -> Result<AccessLog, PoolError> {
    AccessLog::start(
        config.access_log,
        config.access_log_path.as_deref(),
        metrics.clone(),
    )
    .map_err(|err| PoolError::AccessLog {
        path: config
            .access_log_path
            .as_ref()
            .map_or_else(|| "stdout".into(), |p| p.display().to_string()),
        reason: err.to_string(),
    })
}

fn open_trace(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<TraceSink>>, PoolError> {
    config
        .trace
        .as_ref()
        .map(|trace| {
            TraceSink::start(trace, metrics.clone()).map_err(|err| PoolError::Trace {
                path: trace.path.display().to_string(),
                reason: err.to_string(),
            })
        })
        .transpose()
}
