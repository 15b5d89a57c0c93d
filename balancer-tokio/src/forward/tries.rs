//! The tries of one request: the first dispatch sent, then retries on other backends as long
//! as the core says so; each try's failure classified for the answer and for the core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer_core::{AfterTry, FailureKind, MethodClass, RejectReason, RequestId, TryReport};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};

use crate::balance::done::{DoneGuard, End};
use crate::balance::pool::{Dispatch, Pool, SharedPool};
use crate::config::Limits;
use crate::forward::body::ProxyBody;
use crate::http::errors::ProxyError;
use crate::http::headers::{self, Forwarding};
use crate::observe::access_log::AccessRecord;
use crate::observe::trace::TraceEvent;
use crate::upstream::{
    Backend, HeadForm, MAX_REPLAY_BODY_BYTES, RequestBody, RequestBodyError, UpstreamBody,
    UpstreamError, write_request,
};

use super::proxy::Proxy;

/// The tries of one (non-upgrade) request: the first dispatch, then retries on other backends
/// as long as the core says so, within the pool's overall `request_timeout_ms`.
pub(super) struct Tries<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) pool: &'a SharedPool,
    pub(super) route_label: &'a Arc<String>,
    pub(super) started: Instant,
    pub(super) via: &'a HeaderValue,
    pub(super) request_id: HeaderValue,
    /// How the backend's headers are wanted: as lines when `h1` writes the response.
    pub(super) head_form: HeadForm,
    /// The headers the proxy adds, written behind the client's (or put in the map of a
    /// request sent by hyper's client).
    pub(super) forwarding: Forwarding,
}

/// Reads the body into memory when a retry could resend it and it is declared small enough
/// (empty bodies cost nothing); otherwise leaves it to stream once. Reading is bounded by
/// `timeout` in all and by `idle_timeout` between two pieces (then 408).
pub(super) async fn read_replayable(
    body: Incoming,
    may_retry: bool,
    timeout: Duration,
    idle_timeout: Duration,
) -> Result<Source, ProxyError> {
    if body.is_end_stream() {
        return Ok(Source::Replay(Bytes::new()));
    }
    let declared = body.size_hint().exact();
    if !may_retry || declared.is_none_or(|n| n > MAX_REPLAY_BODY_BYTES) {
        return Ok(Source::Stream(Some(body)));
    }
    // Bounded twice: by the declared length (hyper enforces it) and by `Limited`.
    let body = RequestBody::new(body, MAX_REPLAY_BODY_BYTES, idle_timeout);
    let read = tokio::time::timeout(
        timeout,
        Limited::new(body, MAX_REPLAY_BODY_BYTES as usize).collect(),
    )
    .await;
    match read {
        Ok(Ok(collected)) => Ok(Source::Replay(collected.to_bytes())),
        Ok(Err(err)) if matches!(err.downcast_ref(), Some(RequestBodyError::Idle { .. })) => {
            Err(ProxyError::BodyTimeout {
                timeout_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            })
        }
        Ok(Err(_)) | Err(_) => Err(ProxyError::BadRequest {
            reason: "the request body could not be read",
        }),
    }
}

/// The request body as the tries see it.
pub(super) enum Source {
    /// Empty, or small enough to have been read whole: every try sends it.
    Replay(Bytes),
    /// Streamed to the first try; a retry is impossible once it is taken.
    Stream(Option<Incoming>),
}

impl Tries<'_> {
    /// Each try's end goes to the core first (`handle_done`); the core's answer says whether
    /// to retry, after what backoff, and the next backend is asked for only once the backoff
    /// is over. A failure is answered with the last try's error.
    pub(super) async fn run(
        self,
        mut parts: http::request::Parts,
        mut source: Source,
        first: Dispatch,
        mut record: Option<Box<AccessRecord>>,
        mut trace: Option<Box<TraceEvent>>,
    ) -> Response<ProxyBody> {
        let pool = self.pool;
        let proxy = self.proxy;
        // The silent resend on a stale keep-alive connection (`upstream::h1`) follows the
        // core's rule for which methods may be repeated.
        let may_resend = MethodClass::of(parts.method.as_str()) == MethodClass::Idempotent
            || pool.may_retry(&parts.method);
        let (mut token, mut backend) = first;
        let replayable = matches!(source, Source::Replay(_));
        let deadline = tokio::time::Instant::from_std(self.started) + pool.request_timeout;
        let mut message = Vec::with_capacity(1024);
        loop {
            let mut guard = DoneGuard::dispatched(pool.clone(), token, self.started);
            let per_try = pool
                .response_header_timeout
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let try_started = Instant::now();
            let sent = match &mut source {
                // In memory: sent by the request's own task (`upstream::h1`).
                Source::Replay(bytes) => {
                    message.clear();
                    let rest = write_request(
                        &mut message,
                        &parts.method,
                        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                        &parts.headers,
                        &self.forwarding,
                        bytes,
                    );
                    let send = pool.upstream.send(
                        &backend,
                        &message,
                        &rest,
                        &parts.method,
                        may_resend,
                        self.head_form,
                    );
                    match tokio::time::timeout(per_try, send).await {
                        Ok(Ok(response)) => Ok(Ok(response.map(Upstreamed::Inline))),
                        Ok(Err(err)) => Ok(Err(TryError::Upstream(err))),
                        Err(elapsed) => Err(elapsed),
                    }
                }
                Source::Stream(stream) => {
                    let uri = match backend_uri(&backend, &parts.uri) {
                        Ok(uri) => uri,
                        Err(error) => {
                            self.attach(&mut guard, &mut record, &mut trace, &backend, try_started);
                            return proxy.fail(
                                guard,
                                End::Cancelled,
                                error,
                                self.request_id,
                                self.started,
                            );
                        }
                    };
                    let body = match stream.take() {
                        Some(incoming) => RequestBody::new(
                            incoming,
                            proxy.limits.max_body_bytes,
                            Duration::from_millis(proxy.limits.body_read_timeout_ms),
                        ),
                        None => RequestBody::full(Bytes::new()), // unreachable: a stream is never retried
                    };
                    // A streamed body is sent once, so the headers move.
                    self.forwarding.apply(&mut parts.headers);
                    let mut outgoing = Request::new(body);
                    *outgoing.method_mut() = parts.method.clone();
                    *outgoing.uri_mut() = uri;
                    *outgoing.version_mut() = Version::HTTP_11;
                    *outgoing.headers_mut() = std::mem::take(&mut parts.headers);
                    // hyper's client sends a GET, HEAD or CONNECT body of unknown length as no
                    // body at all (it assumes there is none); naming the coding sends the chunks.
                    if outgoing.body().size_hint().exact().is_none() {
                        outgoing.headers_mut().insert(
                            header::TRANSFER_ENCODING,
                            HeaderValue::from_static("chunked"),
                        );
                    }
                    // Boxed: a streamed upload is rare, and hyper's client future is large.
                    let request = Box::pin(pool.client().request(outgoing));
                    match tokio::time::timeout(per_try, request).await {
                        Ok(Ok(response)) => Ok(Ok(response.map(Upstreamed::Hyper))),
                        Ok(Err(err)) => Ok(Err(TryError::Hyper(err))),
                        Err(elapsed) => Err(elapsed),
                    }
                }
            };
            let (error, kind) = match sent {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    // A status the core may retry ends the try at its head, before anything
                    // is passed on; the response is kept until a retry is dispatched, and is
                    // the answer if none can be.
                    if replayable && pool.retries_status(status) {
                        guard.reported();
                        if let AfterTry::Retry { backoff } =
                            pool.handle_done(token, TryReport::response(status))
                        {
                            tracing::debug!(backend = %backend.address, status, "retrying on another backend");
                            if let Some(next) = Box::pin(self.retry_after(token, backoff)).await {
                                drop(response);
                                (token, backend) = next;
                                continue;
                            }
                        }
                    }
                    self.attach(&mut guard, &mut record, &mut trace, &backend, try_started);
                    return backend_response(
                        response,
                        guard,
                        self.via,
                        self.request_id,
                        pool.response_body_idle_timeout,
                    );
                }
                Ok(Err(err)) => {
                    tracing::debug!(backend = %backend.address, error = %err, "forwarding failed");
                    let (error, end) = match &err {
                        TryError::Hyper(err) => {
                            classify_client_error(err, &backend, pool, proxy.limits)
                        }
                        TryError::Upstream(err) => classify_upstream_error(err, &backend, pool),
                    };
                    match end {
                        End::Failed(kind) => (error, kind),
                        _ => {
                            self.attach(&mut guard, &mut record, &mut trace, &backend, try_started);
                            return proxy.fail(guard, end, error, self.request_id, self.started);
                        }
                    }
                }
                Err(_elapsed) => (
                    ProxyError::Timeout {
                        backend: backend.address.clone(),
                        timeout_ms: per_try.as_millis() as u64,
                    },
                    FailureKind::Timeout,
                ),
            };
            // The core hears the failure (and may eject) before any retry is chosen. A
            // streamed body went to hyper with the try: it cannot be sent again.
            guard.reported();
            let report = TryReport::failed(kind).with_body_replayable(replayable);
            if let AfterTry::Retry { backoff } = pool.handle_done(token, report) {
                tracing::debug!(backend = %backend.address, %error, "retrying on another backend");
                if let Some(next) = Box::pin(self.retry_after(token, backoff)).await {
                    (token, backend) = next;
                    continue;
                }
            }
            self.attach(&mut guard, &mut record, &mut trace, &backend, try_started);
            return proxy.fail(
                guard,
                End::Failed(kind),
                error,
                self.request_id,
                self.started,
            );
        }
    }

    /// Waits out the core's backoff, then asks it for the next backend of the request whose
    /// try `after` failed. Callers box this future: a retry is rare, and its timer would
    /// otherwise enlarge every request's future (memory per request in flight). A client that leaves meanwhile drops this future, and the core is
    /// told the request is abandoned.
    async fn retry_after(&self, after: RequestId, backoff: Duration) -> Option<Dispatch> {
        let waiting = Waiting {
            pool: self.pool,
            request: Some(after),
        };
        tokio::time::sleep(backoff).await;
        waiting.over();
        let dispatched = match &self.proxy.explain {
            None => self.pool.handle_retry_work(after, None),
            Some(ring) => {
                let mut record = balancer_core::DecisionRecord::default();
                let dispatched = self.pool.handle_retry_work(after, Some(&mut record));
                ring.push(self.request_id.as_bytes(), self.pool.explain_key, record);
                dispatched
            }
        };
        dispatched.ok()
    }

    /// Makes `guard` the try that answers: it logs and counts the request.
    fn attach(
        &self,
        guard: &mut DoneGuard,
        record: &mut Option<Box<AccessRecord>>,
        trace: &mut Option<Box<TraceEvent>>,
        backend: &Arc<Backend>,
        try_started: Instant,
    ) {
        guard.attach_trace(
            self.proxy
                .trace
                .clone()
                .zip(trace.take())
                .map(|(sink, mut event)| {
                    event.backend = Some(backend.clone());
                    event.service = try_started.elapsed();
                    (sink, event)
                }),
        );
        let record = record.take().map(|mut r| {
            r.backend.clone_from(&backend.address);
            (self.proxy.access_log.clone(), r)
        });
        guard.attach(
            record,
            self.proxy
                .labels(Some(self.route_label), Some(&backend.label)),
        );
    }
}

/// A request waiting out a retry backoff: abandoned in the core if dropped before it is over.
struct Waiting<'a> {
    pool: &'a Pool,
    request: Option<RequestId>,
}

impl Waiting<'_> {
    fn over(mut self) {
        self.request = None;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            self.pool.handle_abandon(request);
        }
    }
}

pub(super) fn reject_error(reason: RejectReason, pool: &Pool) -> ProxyError {
    match reason {
        RejectReason::NoBackend => ProxyError::NoBackend {
            pool: pool.name.clone(),
        },
        RejectReason::Overloaded => ProxyError::Overloaded {
            pool: pool.name.clone(),
        },
    }
}

/// A try's response body: from hyper's client (streamed uploads) or read inline.
pub(super) enum Upstreamed {
    Hyper(Incoming),
    Inline(UpstreamBody),
}

/// A try's failure, from whichever client sent it.
#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error(transparent)]
    Hyper(hyper_util::client::legacy::Error),
    #[error(transparent)]
    Upstream(UpstreamError),
}

/// Maps an inline try's failure to the answer and the outcome the core hears.
fn classify_upstream_error(
    err: &UpstreamError,
    backend: &Backend,
    pool: &Pool,
) -> (ProxyError, End) {
    match err {
        UpstreamError::ConnectTimeout => (
            ProxyError::ConnectTimeout {
                backend: backend.address.clone(),
                timeout_ms: pool.connect_timeout.as_millis() as u64,
            },
            End::Failed(FailureKind::Timeout),
        ),
        UpstreamError::Connect(_) => (
            ProxyError::Connect {
                backend: backend.address.clone(),
            },
            End::Failed(FailureKind::Connect),
        ),
        UpstreamError::Io(_) => (
            ProxyError::Reset {
                backend: backend.address.clone(),
            },
            End::Failed(FailureKind::Reset),
        ),
        // The core has no kind for a garbled answer; like a reset, the backend gave none.
        UpstreamError::BadResponse(reason) => (
            ProxyError::InvalidResponse {
                backend: backend.address.clone(),
                reason,
            },
            End::Failed(FailureKind::Reset),
        ),
    }
}

/// The backend's response, made ready for the client; its body carries the done guard.
pub(super) fn backend_response(
    response: Response<Upstreamed>,
    mut guard: DoneGuard,
    via: &HeaderValue,
    request_id: HeaderValue,
    idle_timeout: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    guard.set_status(parts.status);
    let body = match body {
        Upstreamed::Hyper(body) => {
            headers::strip_hop_by_hop(&mut parts.headers, false);
            add_response_headers(&mut parts.headers, via, request_id);
            ProxyBody::backend(body, guard, idle_timeout)
        }
        // `upstream::h1` reads heads without their hop-by-hop headers.
        Upstreamed::Inline(mut body) => {
            match body.head_lines_mut() {
                // The headers came as lines for h1 to copy: these join them (no map made).
                Some(lines) => {
                    lines.push(header::VIA.as_str().as_bytes(), via.as_bytes());
                    lines.push(
                        headers::X_REQUEST_ID.as_str().as_bytes(),
                        request_id.as_bytes(),
                    );
                }
                None => add_response_headers(&mut parts.headers, via, request_id),
            }
            ProxyBody::upstream(body, guard, idle_timeout)
        }
    };
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body)
}

/// Via and X-Request-Id on a response.
fn add_response_headers(headers: &mut http::HeaderMap, via: &HeaderValue, request_id: HeaderValue) {
    headers::append_via(headers, via);
    headers.insert(headers::X_REQUEST_ID.clone(), request_id);
}

/// `http://BACKEND/path?query` for the client's request URI.
pub(super) fn backend_uri(backend: &Backend, uri: &Uri) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(backend.authority.clone());
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest {
        reason: "the request target cannot be forwarded",
    })
}

/// Maps a client error to the answer and the outcome the core hears.
fn classify_client_error(
    err: &hyper_util::client::legacy::Error,
    backend: &Backend,
    pool: &Pool,
    limits: Limits,
) -> (ProxyError, End) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(body_error) = cause.downcast_ref::<RequestBodyError>() {
            return match body_error {
                RequestBodyError::TooLarge { .. } => (
                    ProxyError::BodyTooLarge {
                        limit_bytes: limits.max_body_bytes,
                    },
                    End::Cancelled,
                ),
                RequestBodyError::Idle { timeout_ms } => (
                    ProxyError::BodyTimeout {
                        timeout_ms: *timeout_ms,
                    },
                    End::Cancelled,
                ),
                RequestBodyError::Client(_) => (
                    ProxyError::BadRequest {
                        reason: "the request body could not be read",
                    },
                    End::Cancelled,
                ),
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return (
                    ProxyError::ConnectTimeout {
                        backend: backend.address.clone(),
                        timeout_ms: pool.connect_timeout.as_millis() as u64,
                    },
                    End::Failed(FailureKind::Timeout),
                );
            }
        }
        source = cause.source();
    }
    if err.is_connect() {
        (
            ProxyError::Connect {
                backend: backend.address.clone(),
            },
            End::Failed(FailureKind::Connect),
        )
    } else {
        (
            ProxyError::Reset {
                backend: backend.address.clone(),
            },
            End::Failed(FailureKind::Reset),
        )
    }
}
