//! The vocabulary of the request protocol: what a driver tells the core and what it answers.
//!
//! A leaf module: the scheduler, the retry rules, errors and decision records all speak these
//! types, and none of them is imported back here.

use std::fmt;
use std::time::Duration;

use crate::backend::BackendId;
use crate::status::StatusSet;
use crate::time::Timestamp;

/// Names one try (one dispatch) until its done is reported.
///
/// The sequence number counts dispatches of this scheduler (unique for its life, and what
/// people read: `r41` is the 42nd dispatch); the slot finds the request in O(1) without
/// hashing. A retry is a new dispatch of the same request: same slot, new sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId {
    pub(crate) seq: u64,
    pub(crate) slot: u32,
}

impl RequestId {
    /// The dispatch sequence number: unique within one scheduler, e.g. for logs and trace hashes.
    pub fn as_u64(self) -> u64 {
        self.seq
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.seq)
    }
}

/// Whether repeating a request has the same effect as sending it once (RFC 9110 §9.2.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MethodClass {
    /// GET, HEAD, OPTIONS, PUT, DELETE, TRACE: retried when retries are on.
    #[default]
    Idempotent,
    /// POST, PATCH, CONNECT and anything unknown: retried only with `retry_non_idempotent`.
    NonIdempotent,
}

impl MethodClass {
    /// The class of an HTTP method by its name (case-sensitive, as methods are).
    pub fn of(method: &str) -> MethodClass {
        match method {
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE" => MethodClass::Idempotent,
            _ => MethodClass::NonIdempotent,
        }
    }
}

/// What the driver knows about a request when it arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestInfo {
    /// Whether the method may be repeated.
    pub method: MethodClass,
    /// The end of the request's whole time (all tries and backoffs): no retry is decided
    /// whose backoff would end after it. `None`: no limit.
    pub deadline: Option<Timestamp>,
    /// The request's affinity key, hashed with [`crate::hash_key`], for the consistent-hash
    /// policy (other policies ignore it). `None`: the request has no key; consistent-hash
    /// falls back to p2c.
    pub hash_key: Option<u64>,
}

/// Why a request was not dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No backend is up, undrained, unejected and in the set.
    NoBackend,
    /// `max_in_flight` requests are already in flight, or every backend that would take work
    /// is at its `max_pending_per_backend` cap.
    Overloaded,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::NoBackend => "no eligible backend",
            RejectReason::Overloaded => "too many requests in flight",
        })
    }
}

/// What the core decided for one try.
#[must_use = "a decision must be carried out: dispatch the request or reject it"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Send the request to `backend`; report its done with `request`.
    Dispatch {
        /// The id to report the done with.
        request: RequestId,
        /// Where to send it.
        backend: BackendId,
    },
    /// Do not send the request anywhere; the request is over.
    Reject {
        /// Why.
        reason: RejectReason,
    },
}

/// How a failed try failed, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Could not connect to the backend.
    Connect,
    /// The connection was reset or closed before the response finished.
    Reset,
    /// The backend did not answer in time.
    Timeout,
    /// The backend answered with a status the pool counts as a failure (see
    /// [`crate::SchedulerConfig::failure_status`]).
    ServerError,
    /// The backend crashed while serving (simulated faults).
    Crashed,
}

/// How a try ended, as the core classified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The response was delivered.
    Success,
    /// The backend failed to serve it.
    Failure(FailureKind),
    /// The client went away first; says nothing about the backend's health or latency.
    Cancelled,
}

/// How a try ended, as the driver saw it: the facts, not their meaning (which statuses are
/// failures, what may be retried: the core decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TryEnd {
    /// The backend answered with `status` (and, unless the try is reported at the head, the
    /// whole body was passed on).
    Response {
        /// The HTTP status code.
        status: u16,
    },
    /// No usable answer: connect error, reset, timeout, crash.
    Failed(FailureKind),
    /// The client went away first.
    Cancelled,
}

/// What the driver reports when a try ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TryReport {
    /// How it ended.
    pub end: TryEnd,
    /// Some of the response already reached the client: a retry would corrupt it.
    pub response_started: bool,
    /// The request body can be sent again (empty, or held in memory); a streamed body cannot.
    pub body_replayable: bool,
}

impl TryReport {
    /// A response with `status`, nothing of it passed on yet, body replayable.
    pub fn response(status: u16) -> TryReport {
        TryReport {
            end: TryEnd::Response { status },
            response_started: false,
            body_replayable: true,
        }
    }

    /// A try that failed with `kind`, nothing passed on yet, body replayable.
    pub fn failed(kind: FailureKind) -> TryReport {
        TryReport {
            end: TryEnd::Failed(kind),
            response_started: false,
            body_replayable: true,
        }
    }

    /// The client left.
    pub fn cancelled() -> TryReport {
        TryReport {
            end: TryEnd::Cancelled,
            response_started: false,
            body_replayable: true,
        }
    }

    /// The same report with the response already (partly) passed on to the client.
    pub fn with_response_started(mut self, started: bool) -> TryReport {
        self.response_started = started;
        self
    }

    /// The same report with a body that can (or cannot) be sent again.
    pub fn with_body_replayable(mut self, replayable: bool) -> TryReport {
        self.body_replayable = replayable;
        self
    }

    /// The outcome the core counts for this report under `failure_status`.
    pub fn outcome(&self, failure_status: &StatusSet) -> Outcome {
        match self.end {
            TryEnd::Response { status } if failure_status.contains(status) => {
                Outcome::Failure(FailureKind::ServerError)
            }
            TryEnd::Response { .. } => Outcome::Success,
            TryEnd::Failed(kind) => Outcome::Failure(kind),
            TryEnd::Cancelled => Outcome::Cancelled,
        }
    }
}

/// For drivers (and tests) that already know the outcome: a success is a 200, a server
/// error a 500, other failures and cancellations as they are.
impl From<Outcome> for TryReport {
    fn from(outcome: Outcome) -> TryReport {
        match outcome {
            Outcome::Success => TryReport::response(200),
            Outcome::Failure(FailureKind::ServerError) => TryReport::response(500),
            Outcome::Failure(kind) => TryReport::failed(kind),
            Outcome::Cancelled => TryReport::cancelled(),
        }
    }
}

/// Why a failed try is not retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoRetryReason {
    /// Retries are disabled or `max_retries` were made.
    AttemptsExhausted,
    /// The method is not idempotent and `retry_non_idempotent` is off.
    NotIdempotent,
    /// The failure may have had effects, or part of the response was sent, or the body is gone.
    NotRetryable,
    /// The retry budget is spent: the pool is failing broadly, retries would only add load.
    BudgetExhausted,
    /// The backoff would end after the request's deadline.
    DeadlineExceeded,
}

/// What happens to the request after a try ended.
#[must_use = "a request told to retry must be retried (or abandoned) after the backoff"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AfterTry {
    /// The request is over: this try's answer is the answer.
    Finished {
        /// Why a failed try was not retried; `None` for a success or a cancellation.
        no_retry: Option<NoRetryReason>,
    },
    /// Wait `backoff`, then ask for the next backend with
    /// [`crate::Scheduler::handle_retry_work`] (or end the request with
    /// [`crate::Scheduler::handle_abandon`] if the client left meanwhile). No backend holds
    /// the request while it waits.
    Retry {
        /// How long to wait first (jittered).
        backoff: Duration,
    },
}

/// What the core learnt from a done, and what the request does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The try that finished.
    pub request: RequestId,
    /// Where it ran.
    pub backend: BackendId,
    /// Dispatch to done, on the driver's clock.
    pub latency: Duration,
    /// How it ended, as the core counts it.
    pub outcome: Outcome,
    /// This done ejected the backend (outlier detection) until the given time.
    pub ejected_until: Option<Timestamp>,
    /// This done was the last in flight on a backend leaving the set, which is now removed.
    pub removed: bool,
    /// Finished, or retry after a backoff.
    pub next: AfterTry,
}

/// What removing a backend left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Requests still in flight on it; their dones return [`crate::CoreError::BackendRemoved`].
    pub orphaned: u32,
}
