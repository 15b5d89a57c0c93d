//! Typed errors for misuse of the core: they describe what happened and change nothing.

use crate::backend::{BackendId, MAX_BACKENDS, MAX_WEIGHT};
use crate::event::RequestId;
use crate::time::Timestamp;

/// What went wrong when a driver asked the core for something it cannot do.
///
/// Every variant leaves the scheduler's state as it was (apart from forgetting a request
/// whose backend was removed, which is finished either way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The backend id does not name a backend in the set.
    #[error(
        "backend {0} is not in the set (never added, or removed); refresh your list of backends"
    )]
    UnknownBackend(BackendId),
    /// A done arrived for a request that is not in flight.
    #[error(
        "request {0} is not in flight: it was never dispatched or its done was already reported; report exactly one done per dispatch"
    )]
    UnknownRequest(RequestId),
    /// A done arrived for a request whose backend was removed while it was in flight.
    #[error(
        "request {request} finished on backend {backend}, which was removed while the request was in flight; its outcome was discarded"
    )]
    BackendRemoved {
        /// The request that finished.
        request: RequestId,
        /// The backend it had been dispatched to.
        backend: BackendId,
    },
    /// A weight outside `1..=MAX_WEIGHT`.
    #[error("weight must be between 1 and {MAX_WEIGHT}, got {0}")]
    InvalidWeight(u32),
    /// A retry was asked for before the backoff the core gave had passed.
    #[error(
        "request {request} asked for its retry before its backoff ended (at {retry_at}); wait for the backoff the done answered"
    )]
    RetryTooEarly {
        /// The failed try.
        request: RequestId,
        /// When the backoff ends.
        retry_at: Timestamp,
    },
    /// The backend set already holds `MAX_BACKENDS` backends.
    #[error("the backend set is full ({MAX_BACKENDS} backends); remove one before adding another")]
    TooManyBackends,
}

/// A broken invariant found by [`crate::Scheduler::check_invariants`]: always a bug in the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("core invariant violated: {0}")]
pub struct InvariantViolation(pub String);
