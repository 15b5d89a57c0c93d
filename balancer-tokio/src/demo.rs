//! Demo mode: four demo backends and a least-pending balancer in front of them, in one process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::access_log::AccessLogFormat;
use crate::config::{
    BackendConfig, Config, Limits, ListenerConfig, PoolConfig, RouteConfig, defaults,
};
use crate::demo_backend::{DemoBackend, DemoBackendConfig};
use crate::routing::HostPattern;
use crate::server::{RunningBalancer, ServeError, ShutdownReport, start};

/// The balancer's port in demo mode.
pub const DEMO_BALANCER_PORT: u16 = 8080;
/// The first demo backend's port; the others follow.
pub const DEMO_FIRST_BACKEND_PORT: u16 = 9001;
/// How many demo backends run.
pub const DEMO_BACKENDS: u16 = 4;

/// Where demo mode listens. Port 0 everywhere gives free ports (for tests).
#[derive(Clone, Copy, Debug)]
pub struct DemoPorts {
    /// The balancer's port.
    pub balancer: u16,
    /// The first backend's port; the others follow it (or each get a free port if 0).
    pub first_backend: u16,
}

impl Default for DemoPorts {
    fn default() -> Self {
        DemoPorts {
            balancer: DEMO_BALANCER_PORT,
            first_backend: DEMO_FIRST_BACKEND_PORT,
        }
    }
}

/// Why demo mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A demo backend could not bind.
    #[error(transparent)]
    Backend(#[from] std::io::Error),
    /// The balancer could not start.
    #[error(transparent)]
    Balancer(#[from] ServeError),
}

/// The running demo.
pub struct Demo {
    /// The backends, #1 first.
    pub backends: Vec<DemoBackend>,
    /// The balancer.
    pub balancer: RunningBalancer,
}

impl Demo {
    /// Starts the backends, then the balancer over them (least-pending, text access log).
    pub async fn start(ports: DemoPorts) -> Result<Demo, DemoError> {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut backends = Vec::new();
        for index in 0..DEMO_BACKENDS {
            let port = if ports.first_backend == 0 {
                0
            } else {
                ports.first_backend + index
            };
            backends.push(
                DemoBackend::start(DemoBackendConfig {
                    listen: SocketAddr::new(localhost, port),
                    id: u32::from(index) + 1,
                    latency_ms: 0,
                    jitter_ms: 0,
                })
                .await?,
            );
        }
        let config = demo_config(
            SocketAddr::new(localhost, ports.balancer),
            backends.iter().map(|b| b.local_addr()).collect(),
        );
        let balancer = start(config).await?;
        Ok(Demo { backends, balancer })
    }

    /// One banner line per listener, then how to try it.
    pub fn banner(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "demo backend #{} listening on http://{}/",
                    i + 1,
                    b.local_addr()
                )
            })
            .collect();
        let address = self.balancer.local_addrs()[0];
        lines.push(format!(
            "balancer listening on http://{address}/ (least-pending over {} backends)",
            self.backends.len()
        ));
        lines.push(format!("try: curl http://{address}/"));
        lines
    }

    /// Stops the balancer gracefully, then the backends.
    pub async fn stop(self) -> ShutdownReport {
        let report = self.balancer.shutdown().await;
        for backend in self.backends {
            backend.stop().await;
        }
        report
    }
}

fn demo_config(listen: SocketAddr, backends: Vec<SocketAddr>) -> Config {
    Config {
        listeners: vec![ListenerConfig {
            name: "demo".into(),
            address: listen,
            max_connections: defaults::MAX_CONNECTIONS,
        }],
        pools: vec![PoolConfig {
            name: "demo".into(),
            policy: balancer_core::PolicyKind::LeastPending,
            seed: defaults::SEED,
            backends: backends
                .iter()
                .map(|a| BackendConfig {
                    address: a.to_string(),
                    weight: 1,
                })
                .collect(),
            connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            response_header_timeout_ms: defaults::RESPONSE_HEADER_TIMEOUT_MS,
            idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
            max_idle_per_backend: defaults::MAX_IDLE_PER_BACKEND,
            max_in_flight: balancer_core::DEFAULT_MAX_IN_FLIGHT,
        }],
        routes: vec![RouteConfig {
            name: "demo".into(),
            host: HostPattern::Any,
            path_prefix: "/".into(),
            port: None,
            pool: 0,
        }],
        limits: Limits::default(),
        access_log: AccessLogFormat::Text,
        shutdown_grace_ms: defaults::SHUTDOWN_GRACE_MS,
    }
}
