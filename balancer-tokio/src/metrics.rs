//! Prometheus metrics (prometheus-client): what the admin listener's `GET /metrics` serves.
//!
//! Counters and histograms are updated on the request path (one hashed label lookup under a
//! read lock each); gauges of backend state are refreshed from the core's snapshots when
//! scraped, so they cost nothing between scrapes. One `Metrics` lives for the whole process:
//! it survives config reloads.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's name (`-` when none matched).
    pub route: Arc<String>,
    /// The backend's address (`-` when the proxy answered itself).
    pub backend: Arc<String>,
    /// The status sent to the client.
    pub status: u16,
}

/// Labels naming a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name.
    pub route: Arc<String>,
}

/// Labels naming a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool's name.
    pub pool: Arc<String>,
}

/// Labels naming a backend of a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The pool's name.
    pub pool: Arc<String>,
    /// The backend's address.
    pub backend: Arc<String>,
}

/// Labels of a rate-limited request: which limit refused it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `global`, `client` or `route`.
    pub limit: &'static str,
}

/// Labels of a reload: `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a backend's health: one series per state, 1 for the current one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// The pool's name.
    pub pool: Arc<String>,
    /// The backend's address.
    pub backend: Arc<String>,
    /// `up`, `down`, `draining` or `ejected`.
    pub state: &'static str,
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Requests finished, by route, backend and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request arrival to end of response body, in seconds, by route.
    pub request_duration: Family<RouteLabels, Histogram>,
    /// Requests in flight per backend (refreshed at scrape).
    pub pending: Family<BackendLabels, Gauge>,
    /// Backend weight (refreshed at scrape).
    pub weight: Family<BackendLabels, Gauge>,
    /// Peak-EWMA latency estimate per backend, in seconds (refreshed at scrape).
    pub ewma_seconds: Family<BackendLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Backend health: 1 for the current state (refreshed at scrape).
    pub health: Family<HealthLabels, Gauge>,
    /// Retries dispatched, by pool.
    pub retries: Family<PoolLabels, Counter>,
    /// Outlier ejections, by backend.
    pub ejections: Family<BackendLabels, Counter>,
    /// Active health-check transitions, by backend.
    pub health_transitions: Family<HealthLabels, Counter>,
    /// Requests refused by a rate limit, by limit.
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Config reloads, by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Trace records dropped because the writer fell behind (its queue was full).
    pub trace_dropped: Counter,
    /// Trace records written.
    pub trace_written: Counter,
    /// Handles to the series of each (route, backend, status) seen, so that counting a
    /// request costs no hashing of label strings (see [`Metrics::observe_request`]).
    request_handles: RwLock<HashMap<HandleKey, RequestHandles, BuildHasherDefault<PtrHasher>>>,
}

/// A request's label set by identity: the addresses of its route and backend label strings
/// and its status. The cached [`RequestHandles`] hold clones of those `Arc`s, so an address
/// cannot be freed and reused for another label while its entry exists.
type HandleKey = (usize, usize, u16);

/// Label sets whose handles are cached at most.
const MAX_CACHED_HANDLES: usize = 4096;

/// The series one label set counts into: clones share the family's storage, so updating
/// them is updating what `/metrics` shows.
struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    _route: Arc<String>,
    _backend: Arc<String>,
}

/// Hasher for [`HandleKey`]: a multiply-rotate over a few words (FxHash's), enough for keys
/// no client controls.
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("balancer");
        let requests = Family::<RequestLabels, Counter>::default();
        // 100 µs to about 13 s in 18 doublings: loopback hops to slow uploads.
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 18))) as fn() -> Histogram,
        );
        let pending = Family::<BackendLabels, Gauge>::default();
        let weight = Family::<BackendLabels, Gauge>::default();
        let ewma_seconds = Family::default();
        let health = Family::<HealthLabels, Gauge>::default();
        let retries = Family::<PoolLabels, Counter>::default();
        let ejections = Family::<BackendLabels, Counter>::default();
        let health_transitions = Family::<HealthLabels, Counter>::default();
        let rate_limited = Family::<LimitLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let trace_dropped = Counter::default();
        let trace_written = Counter::default();
        registry.register(
            "trace_dropped_records",
            "Traffic-trace records dropped because the writer's queue was full",
            trace_dropped.clone(),
        );
        registry.register(
            "trace_written_records",
            "Traffic-trace records written",
            trace_written.clone(),
        );
        registry.register(
            "requests",
            "Requests finished, by route, backend and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request head to end of response body",
            request_duration.clone(),
        );
        registry.register(
            "backend_pending",
            "Requests in flight per backend",
            pending.clone(),
        );
        registry.register("backend_weight", "Backend weight", weight.clone());
        registry.register(
            "backend_ewma_latency_seconds",
            "Peak-EWMA latency estimate per backend",
            ewma_seconds.clone(),
        );
        registry.register(
            "backend_health",
            "1 for the backend's current state (up, down, draining, ejected)",
            health.clone(),
        );
        registry.register("retries", "Retries dispatched, by pool", retries.clone());
        registry.register(
            "outlier_ejections",
            "Backends ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "health_transitions",
            "Active health-check transitions (state is the new state)",
            health_transitions.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429, by limit",
            rate_limited.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, by result",
            reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            pending,
            weight,
            ewma_seconds,
            health,
            retries,
            ejections,
            health_transitions,
            rate_limited,
            reloads,
            trace_dropped,
            trace_written,
            request_handles: RwLock::default(),
        }
    }

    /// Counts one finished request. The label set's series are looked up by the identity of
    /// its label strings (each route and backend label is one shared `Arc` per config
    /// generation); the first request of a label set creates them in the families as before.
    pub fn observe_request(&self, labels: &RequestLabels, duration: Duration) {
        let key = (
            Arc::as_ptr(&labels.route) as usize,
            Arc::as_ptr(&labels.backend) as usize,
            labels.status,
        );
        let seconds = duration.as_secs_f64();
        {
            let handles = self
                .request_handles
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(cached) = handles.get(&key) {
                cached.requests.inc();
                cached.duration.observe(seconds);
                return;
            }
        }
        let cached = RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self
                .request_duration
                .get_or_create(&RouteLabels {
                    route: labels.route.clone(),
                })
                .clone(),
            _route: labels.route.clone(),
            _backend: labels.backend.clone(),
        };
        cached.requests.inc();
        cached.duration.observe(seconds);
        let mut handles = self
            .request_handles
            .write()
            .unwrap_or_else(|p| p.into_inner());
        // Each reload makes new route labels, so old keys go stale: the cache is bounded by
        // starting over (the series themselves stay in the families).
        if handles.len() >= MAX_CACHED_HANDLES {
            handles.clear();
        }
        handles.insert(key, cached);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_same_series_as_the_families() {
        let cached = Metrics::new();
        let direct = Metrics::new();
        let route = Arc::new("r".to_owned());
        let backend = Arc::new("10.0.0.1:80".to_owned());
        let observe = |metrics: &Metrics, route: &Arc<String>, status: u16, ms: u64| {
            let labels = RequestLabels {
                route: route.clone(),
                backend: backend.clone(),
                status,
            };
            metrics.observe_request(&labels, Duration::from_millis(ms));
        };
        observe(&cached, &route, 200, 1);
        observe(&cached, &route, 200, 3);
        observe(&cached, &route, 502, 30);
        // Another generation's label with the same text is the same series.
        observe(&cached, &Arc::new("r".to_owned()), 200, 2);
        for (status, ms) in [(200, 1), (200, 3), (502, 30), (200, 2)] {
            let labels = RequestLabels {
                route: route.clone(),
                backend: backend.clone(),
                status,
            };
            direct.requests.get_or_create(&labels).inc();
            direct
                .request_duration
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .observe(Duration::from_millis(ms).as_secs_f64());
        }
        // Series come out in the family's hash order: compare as sets of lines.
        let lines = |text: String| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(lines(cached.encode()), lines(direct.encode()));
        assert!(cached.encode().contains("status=\"200\"} 3"));
    }
}
