//! The done guard: reports a try's end to the core exactly once (finished, failed, or dropped
//! by the client), with the request's access-log line, metrics and trace record.
//!
//! Done is reported when the response body has finished streaming, not at the response headers,
//! so a long download counts as pending for least-pending for as long as it lasts.

use std::sync::Arc;
use std::time::Instant;

use balancer_core::trace::TraceOutcome;
use balancer_core::{FailureKind, Outcome, RequestId, TryReport};

use crate::balance::pool::SharedPool;
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::observe::metrics::{Metrics, RequestLabels};
use crate::observe::trace::{TraceEvent, TraceSink};

/// How a response ended, as the done guard records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The body was delivered in full.
    Complete,
    /// The backend failed while the body streamed.
    Failed(FailureKind),
    /// The client went away first.
    Cancelled,
}

/// Reports the done (to the core) and the access-log line, exactly once: explicitly through
/// [`DoneGuard::finish`], or as `Cancelled` when dropped unfinished.
pub struct DoneGuard {
    /// The pool of the try, and the try until its done is reported.
    dispatched: Option<(SharedPool, Option<RequestId>)>,
    /// The status passed on to the client (0 until one is set).
    status: u16,
    // The access-log record and the trace event are boxed (and only exist when on): the
    // guard rides in every response body, which hyper moves several times per request.
    log: Option<(AccessLog, Box<AccessRecord>)>,
    metrics: Option<(Arc<Metrics>, RequestLabels)>,
    trace: Option<(Arc<TraceSink>, Box<TraceEvent>)>,
    started: Instant,
    rejected: bool,
}

impl DoneGuard {
    /// A guard for one try dispatched as `request` in `pool`; the access-log line and the
    /// request's metrics are attached to the try that answers the client.
    pub fn dispatched(pool: SharedPool, request: RequestId, started: Instant) -> Self {
        DoneGuard {
            dispatched: Some((pool, Some(request))),
            status: 0,
            log: None,
            metrics: None,
            trace: None,
            started,
            rejected: false,
        }
    }

    /// A guard for a response the proxy made itself (no dispatch): it only logs and counts.
    pub fn local(
        log: Option<(AccessLog, Box<AccessRecord>)>,
        metrics: Option<(Arc<Metrics>, RequestLabels)>,
        started: Instant,
    ) -> Self {
        DoneGuard {
            dispatched: None,
            status: 0,
            log,
            metrics,
            trace: None,
            started,
            rejected: true,
        }
    }

    /// Makes this the try that answers the client: it writes the access-log line and counts
    /// the request when it ends.
    pub fn attach(
        &mut self,
        log: Option<(AccessLog, Box<AccessRecord>)>,
        metrics: Option<(Arc<Metrics>, RequestLabels)>,
    ) {
        self.log = log;
        self.metrics = metrics;
    }

    /// Makes this guard write `event` to the traffic trace when it ends.
    pub fn attach_trace(&mut self, trace: Option<(Arc<TraceSink>, Box<TraceEvent>)>) {
        self.trace = trace;
    }

    /// The try's done was already reported (by the tries, when its head arrived): this
    /// guard now only logs and counts.
    pub fn reported(&mut self) {
        if let Some((_, request)) = &mut self.dispatched {
            *request = None;
        }
    }

    /// Records the status sent to the client; the core decides, from its `failure_status`,
    /// whether it counts as the backend failing.
    pub fn set_status(&mut self, status: http::StatusCode) {
        self.status = status.as_u16();
        if let Some((_, record)) = &mut self.log {
            record.status = status.as_u16();
        }
        if let Some((_, labels)) = &mut self.metrics {
            labels.status = status.as_u16();
        }
        if let Some((_, event)) = &mut self.trace {
            event.status = status.as_u16();
        }
    }

    /// Reports the end once; later calls (and the drop) do nothing. This try's answer is the
    /// one the client gets, so it is reported as passed on (never retried).
    pub fn finish(&mut self, end: End, bytes: u64) {
        let (report, outcome) = match end {
            End::Complete => (
                TryReport::response(if self.status == 0 { 200 } else { self.status }),
                // The log's name for it; the core classifies it for itself.
                if self.status >= 500 {
                    Outcome::Failure(FailureKind::ServerError)
                } else {
                    Outcome::Success
                },
            ),
            End::Failed(kind) => (TryReport::failed(kind), Outcome::Failure(kind)),
            End::Cancelled => (TryReport::cancelled(), Outcome::Cancelled),
        };
        let pool = self.dispatched.take().map(|(pool, request)| {
            if let Some(request) = request {
                pool.handle_last_done(request, report.with_response_started(true));
            }
            pool
        });
        if let Some((metrics, labels)) = self.metrics.take() {
            let now = Instant::now();
            let latency = now.saturating_duration_since(self.started);
            metrics.observe_request(&labels, latency);
            // The try that answered the client (the only one with metrics attached) counts
            // the request in its pool's window; a tunnel's life is not a request's latency.
            if let Some(pool) = pool.as_ref().filter(|_| labels.status != 101) {
                pool.record_request(now, latency, labels.status);
            }
        }
        if let Some((log, mut record)) = self.log.take() {
            record.bytes = bytes;
            record.duration = self.started.elapsed();
            record.outcome = if self.rejected {
                "rejected"
            } else {
                outcome_name(outcome)
            };
            log.write(record);
        }
        if let Some((sink, mut event)) = self.trace.take() {
            event.response_bytes = bytes;
            event.outcome = match outcome {
                _ if self.rejected => TraceOutcome::Rejected,
                Outcome::Success => TraceOutcome::Ok,
                Outcome::Failure(_) => TraceOutcome::Failed,
                Outcome::Cancelled => TraceOutcome::Cancelled,
            };
            sink.record(*event);
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.finish(End::Cancelled, 0);
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Cancelled => "cancelled",
        Outcome::Failure(FailureKind::Connect) => "failure:connect",
        Outcome::Failure(FailureKind::Reset) => "failure:reset",
        Outcome::Failure(FailureKind::Timeout) => "failure:timeout",
        Outcome::Failure(FailureKind::ServerError) => "failure:server-error",
        Outcome::Failure(FailureKind::Crashed) => "failure:crashed",
    }
}
