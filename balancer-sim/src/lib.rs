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
//! - [`theory`]: closed forms the theory checks compare against.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod arrivals;
pub mod backends;
pub mod compare;
pub mod distribution;
pub mod engine;
pub mod events;
pub mod faults;
pub mod report;
pub mod theory;

pub use arrivals::ArrivalSpec;
pub use backends::BackendSpec;
pub use distribution::ServiceDist;
pub use engine::{EndKind, Ended, RunStats, SimConfig, SimError, run};
pub use faults::{Fault, FaultAction, Scenario, ScenarioError};
pub use report::Summary;
