//! hyper-util's client, for what the in-task HTTP/1.1 code does not carry: requests whose body
//! streams from the client.

use std::sync::Arc;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;
use super::h1::UpstreamSettings;

/// The client type used to reach backends.
pub type BackendClient = Client<HttpConnector, RequestBody>;

/// One client per traffic worker: connections a client opens are driven by tasks on the
/// runtime that opened them, so a request and its backend connection stay on one thread.
pub fn backend_clients(settings: UpstreamSettings, workers: usize) -> Arc<[BackendClient]> {
    (0..workers.max(1))
        .map(|_| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(settings.connect_timeout));
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(settings.idle_timeout)
                .pool_max_idle_per_host(settings.max_idle_per_backend)
                .pool_timer(TokioTimer::new())
                .build(connector)
        })
        .collect()
}
