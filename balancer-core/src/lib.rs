//! Sans-IO scheduling core of the balancer: backends, policies and the work/done protocol.
//!
//! Events in, decisions out. Time (`now`) and randomness (a seeded `Rng`) are parameters;
//! this crate reads no clock, owns no socket and spawns no thread, so the simulator and the
//! live proxy drive exactly the same code.
//!
//! ```
//! use balancer_core::{
//!     Decision, Outcome, PolicyKind, RequestInfo, Scheduler, SchedulerConfig, Timestamp, TryReport,
//! };
//! use rand::SeedableRng;
//!
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let mut scheduler = Scheduler::new(SchedulerConfig::new(PolicyKind::LeastPending));
//! let now = Timestamp::ZERO;
//! let a = scheduler.add_backend(now, 1).unwrap();
//! let b = scheduler.add_backend(now, 1).unwrap();
//!
//! // Work: the least busy backend is chosen (ties go to the one idle longest).
//! let request_info = RequestInfo::default();
//! let Decision::Dispatch { request, backend } =
//!     scheduler.handle_work(now, &mut rng, request_info, None)
//! else {
//!     panic!("two backends are up");
//! };
//! assert_eq!(backend, a);
//! // While it is busy, the next request goes to the other one.
//! let Decision::Dispatch { backend: second, .. } =
//!     scheduler.handle_work(now, &mut rng, request_info, None)
//! else {
//!     panic!("two backends are up");
//! };
//! assert_eq!(second, b);
//! // Done: the backend becomes lighter again.
//! let done = scheduler
//!     .handle_done(Timestamp::from_nanos(1_000), request, TryReport::response(200), &mut rng)
//!     .unwrap();
//! assert_eq!(done.backend, a);
//! assert_eq!(done.outcome, Outcome::Success);
//! scheduler.check_invariants().unwrap();
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod error;
mod event;
mod explain;
mod health;
pub mod journal;
mod load;
mod outlier;
pub mod policy;
mod retry;
mod scheduler;
mod status;
mod time;
pub mod trace;
mod warmup;

pub use backend::{BackendId, BackendSnapshot, BackendState, MAX_BACKENDS, MAX_WEIGHT};
pub use error::{CoreError, InvariantViolation};
pub use event::{
    AfterTry, Completion, Decision, FailureKind, MethodClass, NoRetryReason, Outcome, RejectReason,
    Removal, RequestId, RequestInfo, TryEnd, TryReport,
};
pub use explain::{
    Candidate, DecisionRecord, EXPLAIN_LIST_SKIPPED_UP_TO, EXPLAIN_SKIPPED_NAMED,
    EXPLAIN_TIE_LIMIT, HashDecision, SkipReason, Skipped,
};
pub use health::{HealthCheckConfig, HealthTransition};
pub use journal::{Journal, JournalEntry};
pub use load::PeakEwma;
pub use outlier::OutlierConfig;
pub use policy::consistent_hash::{MAX_POINTS_PER_BACKEND, POINTS_PER_WEIGHT, hash_key};
pub use policy::{PolicyKind, UnknownPolicy};
pub use retry::RetryConfig;
pub use scheduler::{
    DEFAULT_HASH_LOAD_FACTOR, DEFAULT_MAX_IN_FLIGHT, Reconciliation, Scheduler, SchedulerConfig,
};
pub use status::{InvalidStatus, MAX_STATUS, MIN_STATUS, StatusSet};
pub use time::Timestamp;
pub use warmup::SlowStartConfig;
