//! Prometheus metrics (prometheus-client): what the admin listener's `GET /metrics` serves.
//!
//! Counters and histograms are updated on the request path, found through a small per-thread
//! cache of the label sets seen (a hashed lookup under a read lock only for a new one); gauges of backend state are refreshed from the core's snapshots when
//! scraped, so they cost nothing between scrapes. One `Metrics` lives for the whole process:
//! it survives config reloads.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Tells this `Metrics` apart in the per-thread cache (tests make many in one process).
    id: u64,
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
    /// Access-log records dropped because the writer fell behind (a stalled or slow output).
    pub access_log_dropped: Counter,
    /// Trace records written.
    pub trace_written: Counter,
}

/// Label sets a thread keeps the request counter and duration histogram of. A worker sees few
/// (routes × backends × statuses); when more turn up the cache starts over.
const RECENT_LABEL_SETS: usize = 64;

/// A label set seen recently by this thread, with its metrics (clones share the counts).
/// Holding the labels' `Arc`s keeps their addresses from being reused, so comparing
/// addresses is exact.
struct Recent {
    metrics_id: u64,
    labels: RequestLabels,
    requests: Counter,
    duration: Histogram,
}

thread_local! {
    /// Looking a label set up in a `Family` hashes it (SipHash) under a read lock: about 900
    /// instructions of every request, against a few dozen for this scan.
    static RECENT: RefCell<Vec<Recent>> = const { RefCell::new(Vec::new()) };
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
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped_records",
            "Access-log records dropped because the writer's queue was full (a stalled or slow output)",
            access_log_dropped.clone(),
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
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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
            access_log_dropped,
            trace_written,
        }
    }

    /// Counts one finished request.
    pub fn observe_request(&self, labels: &RequestLabels, duration: Duration) {
        RECENT.with_borrow_mut(|recent| {
            let found = recent.iter().position(|seen| {
                seen.metrics_id == self.id
                    && Arc::ptr_eq(&seen.labels.route, &labels.route)
                    && Arc::ptr_eq(&seen.labels.backend, &labels.backend)
                    && seen.labels.status == labels.status
            });
            let index = found.unwrap_or_else(|| {
                if recent.len() == RECENT_LABEL_SETS {
                    recent.clear();
                }
                recent.push(Recent {
                    metrics_id: self.id,
                    labels: labels.clone(),
                    requests: self.requests.get_or_create(labels).clone(),
                    duration: self
                        .request_duration
                        .get_or_create(&RouteLabels {
                            route: labels.route.clone(),
                        })
                        .clone(),
                });
                recent.len() - 1
            });
            let seen = &recent[index];
            seen.requests.inc();
            seen.duration.observe(duration.as_secs_f64());
        });
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

    fn requests_line(metrics: &Metrics, route: &str) -> Option<String> {
        metrics
            .encode()
            .lines()
            .find(|line| line.starts_with("balancer_requests_total{") && line.contains(route))
            .map(str::to_owned)
    }

    #[test]
    fn cached_label_sets_count_in_their_own_metrics() {
        let one = Metrics::new();
        let two = Metrics::new();
        let labels = |route: &str| RequestLabels {
            route: Arc::new(route.to_owned()),
            backend: Arc::new("b".to_owned()),
            status: 200,
        };
        let a = labels("a");
        for _ in 0..3 {
            one.observe_request(&a, Duration::from_millis(1));
        }
        two.observe_request(&a, Duration::from_millis(1));
        // Equal contents in another Arc: the same series, found again.
        one.observe_request(&labels("a"), Duration::from_millis(1));
        // More label sets than the cache holds: it starts over and still counts each.
        let many: Vec<_> = (0..RECENT_LABEL_SETS + 5)
            .map(|i| labels(&format!("r{i}")))
            .collect();
        for set in &many {
            one.observe_request(set, Duration::from_millis(1));
        }
        one.observe_request(&a, Duration::from_millis(1));
        assert!(requests_line(&one, "route=\"a\"").unwrap().ends_with(" 5"));
        assert!(requests_line(&two, "route=\"a\"").unwrap().ends_with(" 1"));
        assert!(requests_line(&one, "route=\"r3\"").unwrap().ends_with(" 1"));
        assert!(requests_line(&two, "route=\"r3\"").is_none());
        assert!(
            one.encode()
                .contains("balancer_request_duration_seconds_count{route=\"a\"} 5")
        );
    }
}
