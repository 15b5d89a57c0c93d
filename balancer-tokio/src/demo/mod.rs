//! Demo mode: four demo backends and a least-pending balancer in front of them, in one process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub mod backend;

use crate::app::{RunningBalancer, ShutdownReport, start};
use crate::config::Config;
use crate::serve::ServeError;
use backend::{DemoBackend, DemoBackendConfig};

/// The balancer's port in demo mode.
pub const DEMO_BALANCER_PORT: u16 = 8080;
/// The first demo backend's port; the others follow.
pub const DEMO_FIRST_BACKEND_PORT: u16 = 9001;
/// The admin listener's port in demo mode (the same default as in a config file).
pub const DEMO_ADMIN_PORT: u16 = 9901;
/// How many demo backends run.
pub const DEMO_BACKENDS: u16 = 4;

/// Where demo mode listens. Port 0 everywhere gives free ports (for tests).
#[derive(Clone, Copy, Debug)]
pub struct DemoPorts {
    /// The balancer's port.
    pub balancer: u16,
    /// The first backend's port; the others follow it (or each get a free port if 0).
    pub first_backend: u16,
    /// The admin listener's port (0: any free port).
    pub admin: u16,
}

impl Default for DemoPorts {
    fn default() -> Self {
        DemoPorts {
            balancer: DEMO_BALANCER_PORT,
            first_backend: DEMO_FIRST_BACKEND_PORT,
            admin: DEMO_ADMIN_PORT,
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
            SocketAddr::new(localhost, ports.admin),
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
        if let Some(admin) = self.balancer.admin_addr() {
            lines.push(format!(
                "admin listening on http://{admin}/ (/dashboard, /metrics, /backends, /config, /healthz)"
            ));
        }
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

fn demo_config(listen: SocketAddr, backends: Vec<SocketAddr>, admin: SocketAddr) -> Config {
    // Written as the TOML a user would write, so demo mode gets every default a file gets.
    let backends: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "admin = \"{admin}\"\naccess_log = \"text\"\n\
         [[listeners]]\nname = \"demo\"\naddress = \"{listen}\"\n\
         [pools.demo]\npolicy = \"least-pending\"\nbackends = [{}]\n\
         [[routes]]\nname = \"demo\"\npool = \"demo\"\n",
        backends.join(", ")
    );
    Config::from_toml_str(&text, "demo").expect("the demo config is valid")
}
