//! The live HTTP load balancer: tokio + hyper driving `balancer-core`.
//!
//! Every scheduling decision (which backend, or reject) comes from the core; this crate owns
//! sockets, clocks, bodies and configuration. The binary (`src/main.rs`) is a thin CLI over
//! [`server::start`], [`demo::Demo`] and [`demo_backend::DemoBackend`].
//!
//! Places left for later issues: rate limiting and retries belong in the core and are called
//! from `proxy` around `handle_work`; health checks drive `Pool` through the core's `set_up`;
//! hot reload swaps the `Proxy` (an `arc_swap::ArcSwap<Proxy>` in `server`); the admin API is
//! one more listener with its own service.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod body;
pub mod config;
pub mod demo;
pub mod demo_backend;
pub mod errors;
pub mod headers;
pub mod pool;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod shutdown;

pub use config::{Config, ConfigError};
pub use demo::{Demo, DemoPorts};
pub use demo_backend::{DemoBackend, DemoBackendConfig};
pub use server::{RunningBalancer, ServeError, ShutdownReport, start};
