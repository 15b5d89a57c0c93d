//! The application: start the balancer (bind, build the first config generation, spawn the
//! workers and the admin listener), and shut it down gracefully.

pub mod start;
pub mod workers;

pub use start::{RunningBalancer, ShutdownReport, start, start_file};
