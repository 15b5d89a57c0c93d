//! Body wrappers: the request body with its size limit, and the response body whose end reports
//! the request's done to the core exactly once (finished, failed, or dropped by the client).
//!
//! Done is reported when the response body has finished streaming, not at the response headers,
//! so a long download counts as pending for least-pending for as long as it lasts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use balancer_core::trace::TraceOutcome;
use balancer_core::{FailureKind, Outcome, RequestId};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::{AccessLog, AccessRecord};
use crate::metrics::{Metrics, RequestLabels};
use crate::pool::SharedPool;
use crate::trace::{TraceEvent, TraceSink};
use crate::upstream::{HeadLines, UpstreamBody};

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client sent more than `max_body_bytes`.
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The configured limit.
        limit_bytes: u64,
    },
    /// Reading from the client failed (it went away, or sent a malformed chunk).
    #[error("reading the request body from the client failed: {0}")]
    Client(#[source] hyper::Error),
}

/// A client's request body as the proxy receives it.
pub enum ClientBody {
    /// Read by hyper's server (requests the plain HTTP/1.1 path hands over, and HTTP/2).
    Hyper(Incoming),
    /// No body: a plain request served by [`crate::h1`], which takes only bodiless requests.
    /// `h1` writes its response, so the backend's headers may come as
    /// [`crate::upstream::HeadLines`] in the response body instead of in its map.
    Empty,
}

/// Largest request body kept in memory so that a failed try can be sent again to another
/// backend. Small bodies (form posts, JSON calls) are the common case for retryable requests;
/// larger ones stream once and are not retried, so memory per request stays bounded.
pub const MAX_REPLAY_BODY_BYTES: u64 = 64 * 1024;

/// The body sent to a backend: the client's, streamed and cut off past `max_body_bytes`, or a
/// small body held in memory so that it can be sent again on a retry.
pub enum RequestBody {
    /// Streamed from the client, once.
    Stream(StreamBody),
    /// Held in memory (at most [`MAX_REPLAY_BODY_BYTES`]); empty for no body.
    Full(Option<Bytes>),
}

/// The client's body with its size limit.
pub struct StreamBody {
    inner: Incoming,
    limit_bytes: u64,
    remaining_bytes: u64,
}

impl RequestBody {
    /// Wraps `inner`, allowing at most `limit_bytes`.
    pub fn new(inner: Incoming, limit_bytes: u64) -> Self {
        RequestBody::Stream(StreamBody {
            inner,
            limit_bytes,
            remaining_bytes: limit_bytes,
        })
    }

    /// A body held in memory (a clone of `Bytes` is a reference count, not a copy).
    pub fn full(bytes: Bytes) -> Self {
        RequestBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Stream(stream) => Pin::new(stream).poll_frame(cx),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(stream) => stream.inner.is_end_stream(),
            RequestBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(stream) => stream.inner.size_hint(),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining_bytes {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                            limit_bytes: this.limit_bytes,
                        })));
                    }
                    this.remaining_bytes -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(RequestBodyError::Client(err)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
    dispatched: Option<(SharedPool, RequestId)>,
    backend_server_error: bool,
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
            dispatched: Some((pool, request)),
            backend_server_error: false,
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
            backend_server_error: false,
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

    /// Records the status sent to the client; a 5xx turns a complete body into a
    /// `ServerError` failure for the core.
    pub fn set_status(&mut self, status: http::StatusCode) {
        self.backend_server_error = status.is_server_error();
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

    /// Reports the end once; later calls (and the drop) do nothing.
    pub fn finish(&mut self, end: End, bytes: u64) {
        let outcome = match end {
            End::Complete if self.backend_server_error => {
                Outcome::Failure(FailureKind::ServerError)
            }
            End::Complete => Outcome::Success,
            End::Failed(kind) => Outcome::Failure(kind),
            End::Cancelled => Outcome::Cancelled,
        };
        if let Some((pool, request)) = self.dispatched.take() {
            pool.handle_done(request, outcome);
        }
        if let Some((metrics, labels)) = self.metrics.take() {
            metrics.observe_request(&labels, self.started.elapsed());
        }
        if let Some((log, mut record)) = self.log.take() {
            record.bytes = bytes;
            record.duration = self.started.elapsed();
            record.outcome = if self.rejected {
                "rejected"
            } else {
                outcome_name(outcome)
            };
            log.write(&record);
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

enum Source {
    Backend(Incoming),
    /// Read by the request's own task from a kept-alive backend connection (upstream.rs).
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// The body of every response the proxy sends: streamed from a backend or made locally,
/// with the done guard that fires when it ends.
pub struct ProxyBody {
    source: Source,
    guard: Option<DoneGuard>,
    sent_bytes: u64,
}

impl ProxyBody {
    /// A backend's body, streamed through.
    pub fn backend(body: Incoming, guard: DoneGuard) -> Self {
        ProxyBody {
            source: Source::Backend(body),
            guard: Some(guard),
            sent_bytes: 0,
        }
    }

    /// A backend's body read by [`crate::upstream`], streamed through.
    pub fn upstream(body: UpstreamBody, guard: DoneGuard) -> Self {
        ProxyBody {
            source: Source::Upstream(body),
            guard: Some(guard),
            sent_bytes: 0,
        }
    }

    /// A body made by the proxy (error pages, 101 for tunnels).
    pub fn full(bytes: Bytes, guard: Option<DoneGuard>) -> Self {
        ProxyBody {
            source: Source::Full((!bytes.is_empty()).then_some(bytes)),
            guard,
            sent_bytes: 0,
        }
    }

    /// The backend's headers, when they came as lines (see [`crate::upstream::HeadForm`]);
    /// the response's map then holds only the headers the proxy added.
    pub fn take_head_lines(&mut self) -> Option<HeadLines> {
        match &mut self.source {
            Source::Upstream(body) => body.take_head_lines(),
            Source::Backend(_) | Source::Full(_) => None,
        }
    }

    fn finish(&mut self, end: End) {
        if let Some(mut guard) = self.guard.take() {
            guard.finish(end, self.sent_bytes);
        }
    }
}

/// Why a response body stopped short: hyper's client or the upstream connection failed.
pub type ProxyBodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ProxyBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyBodyError>>> {
        let this = self.get_mut();
        let polled: Option<Result<Frame<Bytes>, ProxyBodyError>> = match &mut this.source {
            Source::Backend(body) => {
                ready!(Pin::new(body).poll_frame(cx)).map(|r| r.map_err(Into::into))
            }
            Source::Upstream(body) => {
                ready!(Pin::new(body).poll_frame(cx)).map(|r| r.map_err(Into::into))
            }
            Source::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
        };
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.sent_bytes += data.len() as u64;
                }
                // hyper stops polling once `is_end_stream` says so, so the end must be seen here.
                if this.source_is_end_stream() {
                    this.finish(End::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                this.finish(End::Failed(FailureKind::Reset));
                Poll::Ready(Some(Err(err)))
            }
            None => {
                this.finish(End::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.source_is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Backend(body) => body.size_hint(),
            Source::Upstream(body) => body.size_hint(),
            Source::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl ProxyBody {
    fn source_is_end_stream(&self) -> bool {
        match &self.source {
            Source::Backend(body) => body.is_end_stream(),
            Source::Upstream(body) => body.is_end_stream(),
            Source::Full(bytes) => bytes.is_none(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped without being polled to the end: either there was nothing left to send
        // (an empty body hyper never polled), or the client went away.
        let end = if self.source_is_end_stream() {
            End::Complete
        } else {
            End::Cancelled
        };
        self.finish(end);
    }
}
