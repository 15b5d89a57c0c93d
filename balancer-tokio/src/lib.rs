//! The live HTTP load balancer: tokio + hyper driving `balancer-core`.
//!
//! Every scheduling decision (which backend, or reject) comes from the core; this crate owns
//! sockets, clocks, bodies and configuration. The binary (`src/main.rs`) is a thin CLI over
//! [`server::start`], [`demo::Demo`] and [`demo_backend::DemoBackend`].
//!
//! Around the core's decisions (issue 6): retries in `proxy` (`decide_retry`,
//! `handle_retry_work`), active health probes in `health` (results to `handle_health_check`),
//! rate limits in `ratelimit` (governor), metrics in `metrics`, the admin listener in `admin`,
//! and hot reload in `server` (the `Proxy` behind an `ArcSwap`, schedulers kept across and
//! reconfigured in place).
//!
//! Issue 8: the core's decision records kept per request id in `explain` (served by `admin`
//! at `/explain/{id}`), traffic recorded in the shared `balancer_core::trace` format by
//! `trace`, and the operator commands `balancer explain` and `balancer check --simulate`
//! (which runs `balancer-sim` as a subprocess) in `ops`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod config;
pub mod demo;
pub mod demo_backend;
pub mod errors;
pub mod explain;
pub mod h1;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod ops;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod trace;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use demo::{Demo, DemoPorts};
pub use demo_backend::{DemoBackend, DemoBackendConfig};
pub use runtime::shutdown;
pub use server::{ReloadError, RunningBalancer, ServeError, ShutdownReport, start, start_file};
