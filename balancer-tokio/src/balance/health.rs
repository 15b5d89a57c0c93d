//! Active health checks: the proxy runs the HTTP probes, the core decides up and down.
//!
//! Every `interval_ms` each backend of the pool gets a `GET path` on a fresh connection (a
//! pooled keep-alive connection could hide a backend that no longer accepts new ones); a probe
//! passes when response headers with a status in the expected range arrive within
//! `timeout_ms`. Each result goes to the core (`handle_health_check`), which applies the
//! rise/fall thresholds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::balance::pool::SharedPool;
use crate::config::HealthCheck;
use crate::upstream::Backend;

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Probes the pool's backends forever (the task is aborted when its config is retired).
pub async fn run(pool: SharedPool, check: HealthCheck) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(check.timeout_ms)));
    // No idle connections kept: every probe connects afresh.
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut tick = tokio::time::interval(Duration::from_millis(check.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let backends = pool.backends();
        let probes = backends
            .iter()
            .map(|backend| probe(&client, backend, &check));
        let results = futures_util::future::join_all(probes).await;
        for (backend, passed) in backends.iter().zip(results) {
            pool.handle_health_check(backend, passed);
        }
    }
}

/// One probe: `true` if it passed.
async fn probe(client: &ProbeClient, backend: &Arc<Backend>, check: &HealthCheck) -> bool {
    let uri = format!("http://{}{}", backend.address, check.path);
    let Ok(mut request) = Request::get(uri).body(Empty::new()) else {
        return false;
    };
    if let Ok(host) = HeaderValue::from_str(&backend.address) {
        request.headers_mut().insert(header::HOST, host);
    }
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("balancer-health-check"),
    );
    let answered = tokio::time::timeout(
        Duration::from_millis(check.timeout_ms),
        client.request(request),
    )
    .await;
    let passed = match answered {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            (check.expected_status_min..=check.expected_status_max).contains(&status)
        }
        Ok(Err(_)) | Err(_) => false,
    };
    tracing::trace!(backend = %backend.address, passed, "health probe");
    passed
}
