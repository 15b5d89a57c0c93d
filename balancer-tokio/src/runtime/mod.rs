//! The bottom layer: what every other layer may know of the running process, namely which
//! traffic worker a thread is, where the shutdown is, and what the service manager hears.

pub mod service_manager;
pub mod shutdown;
pub mod worker;
