//! The live HTTP load balancer: tokio + hyper driving `balancer-core`.
//!
//! Every scheduling decision (which backend, or reject) comes from the core; this crate owns
//! sockets, clocks, bodies and configuration. The binary (`src/main.rs`) is a thin CLI over
//! [`start()`], [`Demo`] and [`DemoBackend`].
//!
//! The modules are layers, each using only those below it; a lower layer never names a
//! higher one (`/work/shared/tools/import-circles` finds no circle):
//!
//! | layer | holds |
//! |---|---|
//! | `fuzzing` | (hidden) the bodies of the fuzz targets in `fuzz/`, over the parsers of the layers below |
//! | [`demo`] | demo mode and its backend |
//! | [`app`] | start, the traffic workers, graceful shutdown |
//! | [`dashboard`] | the live dashboard page on the admin listener, its state and event stream |
//! | [`ops`] | the operator commands (`explain`, `check --simulate`) and the replay the dashboard shows |
//! | [`admin`] | the admin listener |
//! | [`serve`] | listeners, client connections, head reading, `h1`, hyper's server, the generation in force and its reload |
//! | [`forward`] | one request: routing, rate limits, tries and retries, upgrades, the response body |
//! | [`balance`] | each pool's core scheduler and backend table, health checks, the done guard |
//! | [`observe`] | metrics, access log, traffic trace, decision records |
//! | [`upstream`] | backends' addresses, keep-alive connections, HTTP/1.1 to backends, hyper's client |
//! | [`http`] | header rewriting, the proxy's own error answers, the client's body |
//! | [`config`] | the TOML format, its validation, and the plain data every layer reads |
//! | [`runtime`] | the worker index and the shutdown phases |
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod observe;
pub mod ops;
pub mod runtime;
pub mod serve;
pub mod upstream;

pub use app::{RunningBalancer, ShutdownReport, start, start_file};
pub use config::{Config, ConfigError};
pub use demo::backend::{DemoBackend, DemoBackendConfig};
pub use demo::{Demo, DemoPorts};
pub use runtime::shutdown;
pub use serve::{ReloadError, ServeError};
