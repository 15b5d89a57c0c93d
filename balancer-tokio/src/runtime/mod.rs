//! The bottom layer: what every other layer may know of the running process, namely which
//! traffic worker a thread is and where the shutdown is.

pub mod shutdown;
pub mod worker;
