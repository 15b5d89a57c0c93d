//! Deterministic discrete-event simulator that drives the real balancer-core.
//!
//! Virtual time in integer nanoseconds, an event queue ordered by (time, sequence), and
//! seeded ChaCha8 streams per role: the same [`SimConfig`] gives the same [`RunStats`] on
//! every run and machine. Laid out by role:
//!
//! - [`distribution`]: service-time grammar (`exp:1ms`, ...) and sampling;
//! - [`arrivals`]: open-loop Poisson, bursty on/off, closed loop;
//! - [`backends`]: the model of synthetic backends (servers, FIFO queue, speed, faults);
//! - [`faults`]: the fault schedule and TOML scenario files;
//! - [`events`]: the event queue;
//! - [`engine`]: the driver that feeds the core and measures;
//! - [`report`]: one run's summary as JSON or a table;
//! - [`compare`]: the policy comparison grid, its report and plots;
//! - [`replay`]: recorded traffic (`balancer_core::trace`) through the simulator, "what if";
//! - [`theory`]: closed forms the theory checks compare against.
//!
//! ```
//! use balancer_core::PolicyKind;
//! use balancer_sim::{BackendSpec, SimConfig, Summary, run};
//!
//! let spec = BackendSpec::new("exp:1ms".parse().unwrap(), 1);
//! let mut config = SimConfig::new(PolicyKind::P2c, 10, spec);
//! config.load = 0.8;
//! config.requests = 10_000;
//! config.check_invariants = true; // the core's invariants after every event
//! let stats = run(&config).unwrap();
//! assert_eq!(stats.completed + stats.failed + stats.rejected, 10_000);
//! // Same config and seed: the same run, decision for decision.
//! assert_eq!(run(&config).unwrap().trace_hash, stats.trace_hash);
//! println!("{}", Summary::new(&config, &stats, 0.0).to_table());
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod arrivals;
pub mod backends;
pub mod compare;
pub mod distribution;
pub mod engine;
pub mod events;
pub mod faults;
pub mod keys;
pub mod options;
pub mod replay;
pub mod report;
pub mod setup;
pub mod theory;

pub use arrivals::ArrivalSpec;
pub use backends::BackendSpec;
pub use distribution::ServiceDist;
pub use engine::{
    CoreOptions, DispatchRecord, EjectionRecord, EndKind, Ended, HealthProbes, Replayed, RunStats,
    SimConfig, SimError, run,
};
pub use faults::{Fault, FaultAction, Scenario, ScenarioError};
pub use keys::KeySpec;
pub use report::Summary;
