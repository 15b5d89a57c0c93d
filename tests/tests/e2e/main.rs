//! The end-to-end tests of the live balancer over loopback, as one test binary: one module per
//! area, all sharing the helpers of the `tests` crate (`tests/src`).
//!
//! One binary links the proxy once and runs every test in one process, so a test that needs the
//! process to itself (thread or descriptor counts) reruns itself alone
//! ([`tests::rerun_alone`]), and a heavy or timing-sensitive one holds [`tests::serial`].
//! A new area is a new file here and one `mod` line below.

mod admin;
mod affinity;
mod chaos_backends;
mod chaos_input;
mod chaos_reload;
mod chaos_slowloris;
mod client_h1;
mod conformance;
mod dashboard;
mod demo;
mod errors;
mod explain;
mod garbage;
mod headers;
mod least_pending;
mod limits;
mod prediction;
mod protocols;
mod rate_limit;
mod reload;
mod resilience;
mod retries;
mod routing;
mod shutdown;
mod soak;
mod streaming;
mod trace;
mod upstream;
mod workers;
