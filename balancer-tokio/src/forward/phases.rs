//! One request as named phases over one [`RequestContext`], with one exit that turns a
//! refusal into the answer, the access-log line, the metrics and the trace record.

use balancer_core::{DecisionRecord, RequestInfo};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};

use crate::balance::done::{DoneGuard, End};
use crate::balance::pool::{Dispatch, Pool, SharedPool};
use crate::forward::body::ProxyBody;
use crate::forward::routing::Route;
use crate::http::body::ClientBody;
use crate::http::errors::ProxyError;
use crate::http::headers::{self, Forwarding};
use crate::observe::access_log::AccessRecord;
use crate::observe::metrics::{LimitLabels, Metrics, RequestLabels};
use crate::observe::trace::TraceEvent;
use crate::runtime::shutdown::DrainGuard;
use crate::upstream::HeadForm;

use super::proxy::{ConnectionInfo, Proxy};
use super::tries::{Source, Tries, read_replayable, reject_error};

impl Proxy {
    /// Serves one request; never fails (errors become responses).
    ///
    /// The request goes through named phases over one `RequestContext`: `route`,
    /// `rate_limit`, `check_body_size`, `rewrite_headers`, then either `upgrade`, or
    /// `read_body`, `first_dispatch` and the tries. A phase that refuses returns its
    /// [`ProxyError`], and the one exit here turns it into the answer, the access-log line,
    /// the metrics and the trace record. Failures after a dispatch are answered by the tries
    /// and the tunnel, which report the try's done first.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<ClientBody>,
        connection: ConnectionInfo,
        drain: DrainGuard,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible> {
        let mut ctx = RequestContext::new(&self, &request, connection);
        // The phases run in this one frame rather than in a nested `async fn`: a nested
        // future is moved into its parent whole, and that copy of a few KiB per request was
        // measured (callgrind) at hundreds of instructions.
        let mut request = request;
        let answered = match self.prepare(&mut ctx, &mut request) {
            Err(error) => Err(error),
            Ok(Prepared {
                pool,
                forwarding,
                upgrade: true,
                ..
            }) => {
                // Boxed, as the other rare paths: their futures would otherwise be part of
                // every request's (memory per request in flight).
                Box::pin(self.upgrade(&mut ctx, pool, request, forwarding, drain)).await
            }
            Ok(Prepared {
                pool,
                route_label,
                forwarding,
                upgrade: false,
            }) => {
                let (parts, body) = request.into_parts();
                // Only `h1` makes bodiless requests, and it writes their responses itself: the
                // backend's headers can come as lines to copy rather than as a map.
                let head_form = match body {
                    ClientBody::Empty => HeadForm::Lines,
                    ClientBody::Hyper(_) => HeadForm::Map,
                };
                // The core says whether this method may be retried, so whether its body is kept.
                let info = pool.request_info(
                    &parts.method,
                    &parts.headers,
                    &parts.uri,
                    ctx.connection.client.ip(),
                );
                let read = match body {
                    ClientBody::Empty => Ok(Source::Replay(Bytes::new())),
                    ClientBody::Hyper(body) => {
                        Box::pin(self.read_body(&mut ctx, pool, body, &parts.method)).await
                    }
                };
                match read.and_then(|source| {
                    Ok((source, self.first_dispatch(pool, &ctx.request_id, info)?))
                }) {
                    Err(error) => Err(error),
                    Ok((source, first)) => {
                        let tries = Tries {
                            proxy: &self,
                            pool,
                            route_label,
                            started: ctx.started,
                            via: ctx.via,
                            request_id: ctx.take_request_id(),
                            head_form,
                            forwarding,
                        };
                        let (record, trace) = (ctx.record.take(), ctx.trace.take());
                        Ok(tries.run(parts, source, first, record, trace).await)
                    }
                }
            }
        };
        Ok(answered.unwrap_or_else(|error| self.answer_error(error, ctx)))
    }

    /// The phases before a backend is involved: `check_host`, `route`, `rate_limit`,
    /// `check_body_size`, `rewrite_headers`; then what the request goes on to.
    fn prepare<'p>(
        &'p self,
        ctx: &mut RequestContext<'p>,
        request: &mut Request<ClientBody>,
    ) -> Result<Prepared<'p>, ProxyError> {
        check_host(request)?;
        check_framing(request)?;
        let route = self.route(ctx, request)?;
        self.rate_limit(ctx, route)?;
        let pool = &self.pools[route.pool];
        self.check_body_size(ctx, request)?;
        let (forwarding, upgrade) = self.rewrite_headers(ctx, request);
        Ok(Prepared {
            pool,
            route_label: &self.route_labels[route.index],
            forwarding,
            upgrade,
        })
    }

    /// Phase `route`: the route, and so the pool, for the request's host, path and listener.
    fn route<'p>(
        &'p self,
        ctx: &mut RequestContext<'p>,
        request: &Request<ClientBody>,
    ) -> Result<&'p Route, ProxyError> {
        let host = ctx.host_value.as_ref().and_then(|v| v.to_str().ok());
        let Some(route) =
            self.routes
                .find(host, request.uri().path(), ctx.connection.listener_port)
        else {
            return Err(ProxyError::NoRoute {
                host: host.unwrap_or_default().to_owned(),
                path: request.uri().path().to_owned(),
            });
        };
        if let Some(record) = &mut ctx.record {
            record.route.clone_from(&route.name);
        }
        let route_label = &self.route_labels[route.index];
        if let Some(event) = &mut ctx.trace {
            event.route = route_label.clone();
            event.pool = self.pools[route.pool].label().clone();
        }
        ctx.route_label = Some(route_label);
        Ok(route)
    }

    /// Phase `rate_limit`: the global, per-client and per-route limits; a refusal is counted.
    fn rate_limit(&self, ctx: &RequestContext<'_>, route: &Route) -> Result<(), ProxyError> {
        if !self.rate_limits.any() {
            return Ok(());
        }
        let Err(refusal) = self
            .rate_limits
            .check(route.index, ctx.connection.client.ip())
        else {
            return Ok(());
        };
        self.metrics
            .rate_limited
            .get_or_create(&LimitLabels {
                limit: refusal.limit.name(),
            })
            .inc();
        Err(ProxyError::RateLimited {
            limit: refusal.limit.name(),
            retry_after_s: refusal.retry_after_s(),
        })
    }

    /// Phase `check_body_size`: refuses a declared oversize body before taking a backend's
    /// time; a chunked one is cut off while streaming by `RequestBody`.
    fn check_body_size(
        &self,
        ctx: &mut RequestContext<'_>,
        request: &Request<ClientBody>,
    ) -> Result<(), ProxyError> {
        let declared_bytes = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(event) = &mut ctx.trace {
            event.request_bytes = declared_bytes.unwrap_or(0);
        }
        if declared_bytes.is_some_and(|n| n > self.limits.max_body_bytes) {
            return Err(ProxyError::BodyTooLarge {
                limit_bytes: self.limits.max_body_bytes,
            });
        }
        Ok(())
    }

    /// Phase `rewrite_headers`: the request made HTTP/1.1 for the backend, without hop-by-hop
    /// headers, and the headers the proxy adds; also whether it asks for a protocol switch.
    fn rewrite_headers(
        &self,
        ctx: &RequestContext<'_>,
        request: &mut Request<ClientBody>,
    ) -> (Forwarding, bool) {
        let upgrade =
            request.version() == Version::HTTP_11 && headers::is_upgrade_request(request.headers());
        *request.version_mut() = Version::HTTP_11;
        headers::strip_hop_by_hop(request.headers_mut(), upgrade);
        // An HTTP/2 client sends :authority instead of Host; HTTP/1.1 backends need Host, so
        // `Forwarding` adds it.
        let client_ip = ctx.connection.client.ip();
        let forwarding = Forwarding::new(
            request.headers(),
            client_ip,
            self.trusts(client_ip),
            ctx.host_value.as_ref(),
            ctx.via,
            ctx.request_id.clone(),
        );
        (forwarding, upgrade)
    }

    /// Phase `upgrade` (instead of the body and the tries): one dispatch, then the tunnel.
    async fn upgrade(
        &self,
        ctx: &mut RequestContext<'_>,
        pool: &SharedPool,
        mut request: Request<ClientBody>,
        forwarding: Forwarding,
        drain: DrainGuard,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        forwarding.apply(request.headers_mut());
        // A tunnel is never retried: once the switch is sent, bytes flow both ways.
        let info = pool.request_info(
            request.method(),
            request.headers(),
            request.uri(),
            ctx.connection.client.ip(),
        );
        let (token, backend) = self.first_dispatch(pool, &ctx.request_id, info)?;
        let mut record = ctx.record.take();
        if let Some(record) = &mut record {
            record.backend.clone_from(&backend.address);
        }
        let mut guard = DoneGuard::dispatched(pool.clone(), token, ctx.started);
        guard.attach(
            record.map(|r| (self.access_log.clone(), r)),
            self.labels(ctx.route_label, Some(&backend.label)),
        );
        guard.attach_trace(
            self.trace
                .clone()
                .zip(ctx.trace.take())
                .map(|(sink, mut event)| {
                    // A tunnel's service time is not a request's: left 0 (replay ignores it).
                    event.backend = Some(backend.clone());
                    (sink, event)
                }),
        );
        let request_id = ctx.take_request_id();
        // Origin form (`/path?query`): an absolute-form target naming the backend's own
        // address would, by RFC 9112 §3.2.2, override the Host the client sent.
        let origin = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<http::Uri>();
        match origin {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                let error = ProxyError::BadRequest {
                    reason: "the request target is not a path",
                };
                return Ok(self.fail(guard, End::Cancelled, error, request_id, ctx.started));
            }
        }
        Ok(self
            .forward_upgrade(
                request,
                pool,
                &backend,
                guard,
                ctx.started,
                request_id,
                drain,
            )
            .await)
    }

    /// Phase `read_body`: a body small enough to be replayed (and of a method the core may
    /// retry) is read before a backend is chosen, so a slow uploader does not hold a backend's
    /// pending slot while it sends.
    async fn read_body(
        &self,
        ctx: &mut RequestContext<'_>,
        pool: &Pool,
        body: hyper::body::Incoming,
        method: &http::Method,
    ) -> Result<Source, ProxyError> {
        let source = read_replayable(
            body,
            pool.may_retry(method),
            pool.request_timeout,
            Duration::from_millis(self.limits.body_read_timeout_ms),
        )
        .await?;
        if let (Some(event), Source::Replay(bytes)) = (&mut ctx.trace, &source) {
            event.request_bytes = bytes.len() as u64;
        }
        Ok(source)
    }

    /// The one exit of a refused request: the answer, with the access-log line, the metrics
    /// and the trace record of what the context knew.
    fn answer_error(&self, error: ProxyError, mut ctx: RequestContext<'_>) -> Response<ProxyBody> {
        let labels = self.labels(ctx.route_label, None);
        self.local_error(
            error,
            ctx.request_id,
            ctx.record.take(),
            labels,
            ctx.trace.take(),
            ctx.started,
        )
    }

    /// The first try's dispatch: every first decision is made here (retries in
    /// `Tries::retry`); with explanations on, its record goes to the ring.
    pub(super) fn first_dispatch(
        &self,
        pool: &Pool,
        request_id: &HeaderValue,
        info: RequestInfo,
    ) -> Result<Dispatch, ProxyError> {
        let dispatched = match &self.explain {
            None => pool.handle_work(info, None),
            Some(ring) => {
                let mut record = DecisionRecord::default();
                let dispatched = pool.handle_work(info, Some(&mut record));
                ring.push(request_id.as_bytes(), pool.explain_key, record);
                dispatched
            }
        };
        dispatched.map_err(|reason| reject_error(reason, pool))
    }

    /// Metric labels for a request on `route` answered via `backend` (status set at the end).
    pub(super) fn labels(
        &self,
        route: Option<&Arc<String>>,
        backend: Option<&Arc<String>>,
    ) -> Option<(Arc<Metrics>, RequestLabels)> {
        Some((
            self.metrics.clone(),
            RequestLabels {
                route: route.unwrap_or(&self.no_backend_label).clone(),
                backend: backend.unwrap_or(&self.no_backend_label).clone(),
                status: 0,
            },
        ))
    }

    /// Reports the done with `end`, then answers the client with `error`.
    pub(super) fn fail(
        &self,
        mut guard: DoneGuard,
        end: End,
        error: ProxyError,
        request_id: HeaderValue,
        started: Instant,
    ) -> Response<ProxyBody> {
        guard.set_status(error.status());
        guard.finish(end, error.body().len() as u64);
        self.local_error(error, request_id, None, None, None, started)
    }

    /// The proxy's own answer to `error`, its body carrying the access-log line, metrics and
    /// trace record given (none when a try's guard has already written them).
    pub(super) fn local_error(
        &self,
        error: ProxyError,
        request_id: HeaderValue,
        mut record: Option<Box<AccessRecord>>,
        mut labels: Option<(Arc<Metrics>, RequestLabels)>,
        trace: Option<Box<TraceEvent>>,
        started: Instant,
    ) -> Response<ProxyBody> {
        let status = error.status();
        let retry_after_s = match &error {
            ProxyError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        if let Some(record) = &mut record {
            record.status = status.as_u16();
        }
        if let Some((_, labels)) = &mut labels {
            labels.status = status.as_u16();
        }
        let mut guard = DoneGuard::local(
            record.map(|r| (self.access_log.clone(), r)),
            labels,
            started,
        );
        guard.attach_trace(self.trace.clone().zip(trace).map(|(sink, mut event)| {
            event.status = status.as_u16();
            (sink, event)
        }));
        let mut response = Response::new(ProxyBody::full(error.body(), Some(guard)));
        *response.status_mut() = status;
        let headers_mut = response.headers_mut();
        headers_mut.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers_mut.insert(headers::X_REQUEST_ID.clone(), request_id);
        if let Some(seconds) = retry_after_s {
            headers_mut.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What one request carries through the phases of [`Proxy::handle`].
/// Phase `check_host`: the request names one host, in a form a backend reads the same way
/// (RFC 9112 §3.2): two Host lines, an HTTP/1.1 request without one, or one that is not a
/// `host[:port]` would let routing and the backend disagree on which site was asked for. So
/// would a target in absolute form (or an HTTP/2 :authority) naming another host than the Host
/// line: the target wins (RFC 9112 §3.2.2) but the Host line is what is forwarded. Userinfo in
/// the target's authority is refused as RFC 9110 §4.2.4 advises (it hides the real host).
pub(crate) fn check_host(request: &Request<ClientBody>) -> Result<(), ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let bad = |reason| Err(ProxyError::BadRequest { reason });
    if let Some(authority) = request.uri().authority() {
        if authority.as_str().contains('@') {
            return bad("the request target's authority has userinfo (user@); send the host only");
        }
        let differs = request.headers().get(header::HOST).is_some_and(|host| {
            !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        });
        if differs {
            return bad("the Host header names another host than the request target");
        }
    }
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => bad("more than one Host header"),
        (None, _) if request.version() == Version::HTTP_11 => {
            bad("an HTTP/1.1 request needs a Host header")
        }
        (Some(host), None) if valid_host(host.as_bytes()) => Ok(()),
        (Some(_), None) => bad("the Host header is not host[:port]"),
        (None, _) => Ok(()),
    }
}

/// Phase `check_framing`: a transfer coding other than `chunked` (`gzip, chunked`) is refused
/// with 501, as nginx does: hyper takes the chunks off, and forwarding the decoded bytes
/// without the coding's label would hand the backend a body other than the one sent. And a
/// protocol switch with a body is refused at once: the tunnel would carry the body as its
/// first bytes, where the backend expects the other protocol.
pub(crate) fn check_framing(request: &Request<ClientBody>) -> Result<(), ProxyError> {
    let headers = request.headers();
    // Most requests have neither header: two lookups and done.
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    if chunked {
        let mut codings = 0;
        let only_chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .all(|value| {
                value.to_str().is_ok_and(|list| {
                    list.split(',').map(str::trim).all(|coding| {
                        codings += 1;
                        coding.eq_ignore_ascii_case("chunked")
                    })
                })
            });
        if !only_chunked {
            return Err(ProxyError::NotImplemented {
                what: "a transfer coding other than chunked",
            });
        }
        // hyper takes one layer of chunks off; a second would reach the backend as body.
        if codings > 1 {
            return Err(ProxyError::BadRequest {
                reason: "chunked is applied more than once (RFC 9112 §6.1); send it once",
            });
        }
    }
    if headers.contains_key(header::UPGRADE) && headers::is_upgrade_request(headers) {
        let has_body = chunked
            || headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            return Err(ProxyError::BadRequest {
                reason: "a protocol switch (Upgrade) request must not have a body",
            });
        }
    }
    Ok(())
}

/// What the phases before a backend decided, the request itself left in place (moving it
/// costs a copy per request).
struct Prepared<'p> {
    pool: &'p SharedPool,
    route_label: &'p Arc<String>,
    /// The headers the proxy adds.
    forwarding: Forwarding,
    /// The request asks for a protocol switch.
    upgrade: bool,
}

/// `host[:port]` as RFC 3986 allows it (a reg-name, IPv4 or bracketed IPv6 literal; no
/// userinfo, no spaces): one pass over the bytes, since every request is checked.
fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                )
        })
}

struct RequestContext<'p> {
    started: Instant,
    connection: ConnectionInfo,
    request_id: HeaderValue,
    /// The Host the client asked for, kept as the header value (a clone is a reference
    /// count): an HTTP/2 client's :authority when it sent no Host.
    host_value: Option<HeaderValue>,
    via: &'p HeaderValue,
    /// Set by the `route` phase.
    route_label: Option<&'p Arc<String>>,
    /// Until the try that answers (or the error exit) takes it.
    record: Option<Box<AccessRecord>>,
    /// As `record`.
    trace: Option<Box<TraceEvent>>,
}

impl<'p> RequestContext<'p> {
    fn new(
        proxy: &'p Proxy,
        request: &Request<ClientBody>,
        connection: ConnectionInfo,
    ) -> RequestContext<'p> {
        let started = Instant::now();
        let request_id = headers::request_id(request.headers());
        let host_value = match request.headers().get(header::HOST) {
            Some(value) if value.to_str().is_ok() => Some(value.clone()),
            _ => request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        let host = host_value.as_ref().and_then(|v| v.to_str().ok());
        let record = proxy.access_log.enabled().then(|| {
            Box::new(AccessRecord {
                request_id: request_id.to_str().unwrap_or("-").to_owned(),
                client: connection.client,
                method: request.method().to_string(),
                host: host.unwrap_or("-").to_owned(),
                path: request
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".into(), |p| p.to_string()),
                route: "-".into(),
                backend: "-".into(),
                status: 0,
                bytes: 0,
                duration: Default::default(),
                outcome: "",
            })
        });
        let trace = proxy.trace.is_some().then(|| {
            Box::new(TraceEvent {
                arrival: started,
                pool: proxy.no_backend_label.clone(),
                route: proxy.no_backend_label.clone(),
                method: request.method().clone(),
                request_bytes: 0,
                response_bytes: 0,
                backend: None,
                service: Duration::ZERO,
                status: 0,
                outcome: balancer_core::trace::TraceOutcome::Rejected,
            })
        });
        let via = if request.version() == Version::HTTP_2 {
            &proxy.via_http2
        } else {
            &proxy.via_http1
        };
        RequestContext {
            started,
            connection,
            request_id,
            host_value,
            via,
            route_label: None,
            record,
            trace,
        }
    }

    /// The request id, for the tries or the tunnel: from a dispatch on they answer every
    /// outcome, so the error exit no longer needs it (and a move saves a reference count).
    fn take_request_id(&mut self) -> HeaderValue {
        std::mem::replace(&mut self.request_id, HeaderValue::from_static(""))
    }
}
