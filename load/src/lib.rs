//! The load harness behind `compare-proxies`: the balancer measured beside HAProxy and nginx on
//! one machine, in one run (see load/README.md).

pub mod configs;
pub mod conns;
pub mod loadgen;
pub mod procs;
pub mod report;
pub mod setup;
