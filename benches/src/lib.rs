//! Benchmarks: criterion benches of the core and the simulator (see `benches/`), and the load
//! harness that compares the live balancer with HAProxy and nginx ([`load`], `compare-proxies`).

pub mod load;
