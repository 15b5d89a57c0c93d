//! Forwarding one request: route, ask the core, send to the backend, stream the answer back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balancer_core::{BackendId, FailedTry, FailureKind, RejectReason, RetryDecision};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::balance::done::{DoneGuard, End};
use crate::balance::pool::{Clock, Dispatch, Pool, PoolError, SharedPool};
use crate::config::{Config, Limits};
use crate::forward::body::ProxyBody;
use crate::forward::ratelimit::RateLimits;
use crate::forward::routing::{Route, RouteTable};
use crate::http::body::ClientBody;
use crate::http::errors::ProxyError;
use crate::http::headers::{self, Forwarding};
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::observe::explain::ExplainRing;
use crate::observe::metrics::{LimitLabels, Metrics, RequestLabels};
use crate::observe::trace::{TraceEvent, TraceSink};
use crate::runtime::shutdown::DrainGuard;
use crate::upstream::{
    Backend, HeadForm, MAX_REPLAY_BODY_BYTES, RequestBody, RequestBodyError, UpstreamBody,
    UpstreamError, write_request,
};

/// How often the maintenance task runs: ejections end at most this late while a pool is idle
/// (with traffic, the core ends them on the next request), and drained backends gone from the
/// config are removed at most this late after their last request.
const MAINTENANCE_TICK: Duration = Duration::from_millis(250);

/// Where a request came in.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// The port of the listener that accepted it.
    pub listener_port: u16,
}

/// Methods that may be retried by default (RFC 9110 §9.2.2: repeating them has the same effect).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Everything needed to serve requests under one config generation; shared by all connections.
/// A reload builds a new one (keeping the pools' schedulers) and swaps it in atomically;
/// requests in flight finish on the one they started with.
pub struct Proxy {
    routes: RouteTable,
    route_labels: Vec<Arc<String>>,
    pools: Vec<SharedPool>,
    limits: Limits,
    access_log: AccessLog,
    rate_limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    via_http1: HeaderValue,
    via_http2: HeaderValue,
    no_backend_label: Arc<String>,
    /// Decision records for `GET /explain/{id}`; `None` when `explain_ring_size = 0`.
    explain: Option<Arc<ExplainRing>>,
    /// The traffic trace, when `[trace]` is configured.
    trace: Option<Arc<TraceSink>>,
    /// Health checks and the maintenance tick of this generation, stopped when it is retired.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    /// Builds the routing table and one pool (scheduler + client) per configured pool.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Proxy, PoolError> {
        let clock = Clock::new();
        let pools = config
            .pools
            .iter()
            .map(|p| Pool::new(p, clock, metrics.clone(), config.worker_count()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limit, &config.routes));
        let explain = ExplainRing::new(config.explain_ring_size, config.worker_count());
        let trace = open_trace(config, &metrics)?;
        Ok(Proxy::assemble(
            config,
            pools,
            rate_limits,
            metrics,
            explain,
            trace,
        ))
    }

    /// The proxy for a reloaded `config`: pools with the same name keep their scheduler (and
    /// so their backends' state) and connections; rate limiters are kept when unchanged.
    pub fn reload(config: &Config, previous: &Proxy) -> Result<Proxy, PoolError> {
        let clock = previous.pools.first().map_or_else(Clock::new, |p| p.clock);
        let pools = config
            .pools
            .iter()
            .map(|p| {
                match previous.pools.iter().find(|old| old.name == p.name) {
                    Some(old) => Pool::reload(p, old),
                    None => Pool::new(p, clock, previous.metrics.clone(), config.worker_count()),
                }
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rate_limits = if previous
            .rate_limits
            .same_config(&config.rate_limit, &config.routes)
        {
            previous.rate_limits.clone()
        } else {
            Arc::new(RateLimits::new(&config.rate_limit, &config.routes))
        };
        // The ring and the trace writer are kept when their settings are unchanged, so that
        // explanations and the recording carry on across a reload.
        let explain = match &previous.explain {
            Some(ring) if ring.size() == config.explain_ring_size => Some(ring.clone()),
            _ => ExplainRing::new(config.explain_ring_size, config.worker_count()),
        };
        let trace = match &previous.trace {
            Some(sink) if Some(sink.config()) == config.trace.as_ref() => Some(sink.clone()),
            _ => open_trace(config, &previous.metrics)?,
        };
        Ok(Proxy::assemble(
            config,
            pools,
            rate_limits,
            previous.metrics.clone(),
            explain,
            trace,
        ))
    }

    fn assemble(
        config: &Config,
        pools: Vec<SharedPool>,
        rate_limits: Arc<RateLimits>,
        metrics: Arc<Metrics>,
        explain: Option<Arc<ExplainRing>>,
        trace: Option<Arc<TraceSink>>,
    ) -> Proxy {
        Proxy {
            routes: RouteTable::new(&config.routes),
            route_labels: config
                .routes
                .iter()
                .map(|r| Arc::new(r.name.clone()))
                .collect(),
            pools,
            limits: config.limits,
            access_log: AccessLog::new(config.access_log),
            rate_limits,
            metrics,
            config: Arc::new(config.clone()),
            via_http1: HeaderValue::from_static("1.1 balancer"),
            via_http2: HeaderValue::from_static("2.0 balancer"),
            no_backend_label: Arc::new("-".into()),
            explain,
            trace,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The limits clients are held to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The access log.
    pub fn access_log(&self) -> AccessLog {
        self.access_log
    }

    /// The pools, in configuration order.
    pub fn pools(&self) -> &[SharedPool] {
        &self.pools
    }

    /// The config this generation serves.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The metrics (shared by every generation).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The rate limiters.
    pub fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }

    /// The decision-record ring, unless `explain_ring_size = 0`.
    pub fn explain(&self) -> Option<&Arc<ExplainRing>> {
        self.explain.as_ref()
    }

    /// The traffic trace, if recording.
    pub fn trace(&self) -> Option<&Arc<TraceSink>> {
        self.trace.as_ref()
    }

    /// Starts this generation's background work: active health checks of each pool that has
    /// them, and a tick that ends ejections while idle, removes drained backends gone from the
    /// config and trims the rate limiter's client map.
    pub fn start_tasks(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for pool in &self.pools {
            if let Some(check) = &pool.health_check {
                tasks.push(
                    tokio::spawn(crate::balance::health::run(pool.clone(), check.clone()))
                        .abort_handle(),
                );
            }
        }
        let pools = self.pools.clone();
        let rate_limits = self.rate_limits.clone();
        tasks.push(
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(MAINTENANCE_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    for pool in &pools {
                        pool.handle_timeout();
                        pool.reap();
                    }
                    rate_limits.maintain();
                }
            })
            .abort_handle(),
        );
    }

    /// Stops this generation's background work (a newer one has taken over, or shutdown).
    pub fn retire(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
        }
    }

    /// Serves one request; never fails (errors become responses).
    ///
    /// The request goes through named phases over one [`RequestContext`]: `route`,
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
        match self.phases(&mut ctx, request, drain).await {
            Ok(response) => Ok(response),
            Err(error) => Ok(self.answer_error(error, ctx)),
        }
    }

    async fn phases<'p>(
        &'p self,
        ctx: &mut RequestContext<'p>,
        mut request: Request<ClientBody>,
        drain: DrainGuard,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = self.route(ctx, &request)?;
        self.rate_limit(ctx, route)?;
        let pool = &self.pools[route.pool];
        self.check_body_size(ctx, &request)?;
        let (forwarding, upgrade) = self.rewrite_headers(ctx, &mut request);
        if upgrade {
            return self.upgrade(ctx, pool, request, forwarding, drain).await;
        }

        let (parts, body) = request.into_parts();
        // Only `h1` makes bodiless requests, and it writes their responses itself: the
        // backend's headers can come as lines to copy rather than as a map.
        let head_form = match body {
            ClientBody::Empty => HeadForm::Lines,
            ClientBody::Hyper(_) => HeadForm::Map,
        };
        let may_retry =
            pool.retries_enabled && (is_idempotent(&parts.method) || pool.retry_non_idempotent);
        let source = self.read_body(ctx, pool, body, may_retry).await?;
        let first = self.first_dispatch(pool, &ctx.request_id)?;
        let tries = Tries {
            proxy: self,
            pool,
            route_label: &self.route_labels[route.index],
            started: ctx.started,
            via: ctx.via,
            request_id: ctx.request_id.clone(),
            head_form,
            forwarding,
        };
        let (record, trace) = (ctx.record.take(), ctx.trace.take());
        Ok(tries
            .run(parts, source, may_retry, first, record, trace)
            .await)
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
        let forwarding = Forwarding::new(
            request.headers(),
            ctx.connection.client.ip(),
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
        let (token, backend) = self.first_dispatch(pool, &ctx.request_id)?;
        let mut record = ctx.record.take();
        if let Some(record) = &mut record {
            record.backend.clone_from(&backend.address);
        }
        let mut guard = DoneGuard::dispatched(pool.clone(), token, ctx.started);
        guard.attach(
            record.map(|r| (self.access_log, r)),
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
        let request_id = ctx.request_id.clone();
        match backend_uri(&backend, request.uri()) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(error) => {
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

    /// Phase `read_body`: a body small enough to be replayed is read before a backend is
    /// chosen, so a slow uploader does not hold a backend's pending slot while it sends.
    async fn read_body(
        &self,
        ctx: &mut RequestContext<'_>,
        pool: &Pool,
        body: ClientBody,
        may_retry: bool,
    ) -> Result<Source, ProxyError> {
        let source = match body {
            ClientBody::Empty => Source::Replay(Bytes::new()),
            ClientBody::Hyper(body) => {
                read_replayable(body, may_retry, pool.request_timeout).await?
            }
        };
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
    fn first_dispatch(
        &self,
        pool: &Pool,
        request_id: &HeaderValue,
    ) -> Result<Dispatch, ProxyError> {
        let dispatched = match &self.explain {
            None => pool.handle_work(),
            Some(ring) => {
                let (dispatched, record) = pool.handle_work_explained();
                ring.push(request_id.as_bytes(), pool.explain_key, record);
                dispatched
            }
        };
        dispatched.map_err(|reason| reject_error(reason, pool))
    }

    /// Metric labels for a request on `route` answered via `backend` (status set at the end).
    fn labels(
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

    /// Protocol switch (WebSocket): a dedicated backend connection, then a byte tunnel.
    /// Done is reported when the tunnel closes, so a long WebSocket counts as pending.
    #[allow(clippy::too_many_arguments)]
    async fn forward_upgrade<B>(
        &self,
        mut request: Request<B>,
        pool: &SharedPool,
        backend: &Backend,
        guard: DoneGuard,
        started: Instant,
        request_id: HeaderValue,
        drain: DrainGuard,
    ) -> Response<ProxyBody> {
        let client_upgrade = hyper::upgrade::on(&mut request);
        let (parts, _body) = request.into_parts();
        let upstream_request = Request::from_parts(parts, Empty::<Bytes>::new());

        let connected = tokio::time::timeout(
            pool.connect_timeout,
            TcpStream::connect(backend.address.as_str()),
        )
        .await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) => {
                let error = ProxyError::Connect {
                    backend: backend.address.clone(),
                };
                return self.fail(
                    guard,
                    End::Failed(FailureKind::Connect),
                    error,
                    request_id,
                    started,
                );
            }
            Err(_) => {
                let error = ProxyError::ConnectTimeout {
                    backend: backend.address.clone(),
                    timeout_ms: pool.connect_timeout.as_millis() as u64,
                };
                return self.fail(
                    guard,
                    End::Failed(FailureKind::Timeout),
                    error,
                    request_id,
                    started,
                );
            }
        };
        let _ = stream.set_nodelay(true);
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection.with_upgrades());
            sender.send_request(upstream_request).await
        };
        let mut response = match tokio::time::timeout(pool.response_header_timeout, exchange).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => {
                let error = ProxyError::Reset {
                    backend: backend.address.clone(),
                };
                return self.fail(
                    guard,
                    End::Failed(FailureKind::Reset),
                    error,
                    request_id,
                    started,
                );
            }
            Err(_) => {
                let error = ProxyError::Timeout {
                    backend: backend.address.clone(),
                    timeout_ms: pool.response_header_timeout.as_millis() as u64,
                };
                return self.fail(
                    guard,
                    End::Failed(FailureKind::Timeout),
                    error,
                    request_id,
                    started,
                );
            }
        };

        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The backend declined the switch: an ordinary response, streamed back.
            let via = &self.via_http1;
            return backend_response(response.map(Upstreamed::Hyper), guard, via, request_id);
        }

        let backend_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        parts
            .headers
            .insert(headers::X_REQUEST_ID.clone(), request_id);
        let mut tunnel_guard = guard;
        tunnel_guard.set_status(StatusCode::SWITCHING_PROTOCOLS);
        tokio::spawn(async move {
            // Holding the drain guard keeps graceful shutdown waiting for the tunnel.
            let _drain = drain;
            let (client, backend) = match tokio::join!(client_upgrade, backend_upgrade) {
                (Ok(client), Ok(backend)) => (client, backend),
                _ => {
                    tunnel_guard.finish(End::Failed(FailureKind::Reset), 0);
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => tunnel_guard.finish(End::Complete, up + down),
                Err(_) => tunnel_guard.finish(End::Failed(FailureKind::Reset), 0),
            }
        });
        Response::from_parts(parts, ProxyBody::full(Bytes::new(), None))
    }

    /// Reports the done with `end`, then answers the client with `error`.
    fn fail(
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
    fn local_error(
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
        let mut guard = DoneGuard::local(record.map(|r| (self.access_log, r)), labels, started);
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
}

/// The tries of one (non-upgrade) request: the first dispatch, then retries on other backends
/// as long as the core says so, within the pool's overall `request_timeout_ms`.
struct Tries<'a> {
    proxy: &'a Proxy,
    pool: &'a SharedPool,
    route_label: &'a Arc<String>,
    started: Instant,
    via: &'a HeaderValue,
    request_id: HeaderValue,
    /// How the backend's headers are wanted: as lines when `h1` writes the response.
    head_form: HeadForm,
    /// The headers the proxy adds, written behind the client's (or put in the map of a
    /// request sent by hyper's client).
    forwarding: Forwarding,
}

/// Reads the body into memory when a retry could resend it and it is declared small enough
/// (empty bodies cost nothing); otherwise leaves it to stream once.
async fn read_replayable(
    body: Incoming,
    may_retry: bool,
    timeout: Duration,
) -> Result<Source, ProxyError> {
    if body.is_end_stream() {
        return Ok(Source::Replay(Bytes::new()));
    }
    let declared = body.size_hint().exact();
    if !may_retry || declared.is_none_or(|n| n > MAX_REPLAY_BODY_BYTES) {
        return Ok(Source::Stream(Some(body)));
    }
    // Bounded twice: by the declared length (hyper enforces it) and by `Limited`.
    let read = tokio::time::timeout(
        timeout,
        Limited::new(body, MAX_REPLAY_BODY_BYTES as usize).collect(),
    )
    .await;
    match read {
        Ok(Ok(collected)) => Ok(Source::Replay(collected.to_bytes())),
        Ok(Err(_)) | Err(_) => Err(ProxyError::BadRequest {
            reason: "the request body could not be read",
        }),
    }
}

/// The request body as the tries see it.
enum Source {
    /// Empty, or small enough to have been read whole: every try sends it.
    Replay(Bytes),
    /// Streamed to the first try; a retry is impossible once it is taken.
    Stream(Option<Incoming>),
}

impl Tries<'_> {
    async fn run(
        self,
        mut parts: http::request::Parts,
        mut source: Source,
        may_retry: bool,
        first: Dispatch,
        mut record: Option<Box<AccessRecord>>,
        mut trace: Option<Box<TraceEvent>>,
    ) -> Response<ProxyBody> {
        let pool = self.pool;
        let proxy = self.proxy;
        let idempotent = is_idempotent(&parts.method);
        let (token, mut backend) = first;
        let mut guard = DoneGuard::dispatched(pool.clone(), token, self.started);
        let replayable = matches!(source, Source::Replay(_));
        let deadline = tokio::time::Instant::from_std(self.started) + pool.request_timeout;
        let mut tried: Vec<BackendId> = Vec::new();
        let mut message = Vec::with_capacity(1024);
        loop {
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
                        idempotent || pool.retry_non_idempotent,
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
                        Some(incoming) => RequestBody::new(incoming, proxy.limits.max_body_bytes),
                        None => RequestBody::full(Bytes::new()), // unreachable: a stream is never retried
                    };
                    // A streamed body is sent once, so the headers move.
                    self.forwarding.apply(&mut parts.headers);
                    let mut outgoing = Request::new(body);
                    *outgoing.method_mut() = parts.method.clone();
                    *outgoing.uri_mut() = uri;
                    *outgoing.version_mut() = Version::HTTP_11;
                    *outgoing.headers_mut() = std::mem::take(&mut parts.headers);
                    match tokio::time::timeout(per_try, pool.client().request(outgoing)).await {
                        Ok(Ok(response)) => Ok(Ok(response.map(Upstreamed::Hyper))),
                        Ok(Err(err)) => Ok(Err(TryError::Hyper(err))),
                        Err(elapsed) => Err(elapsed),
                    }
                }
            };
            let (error, kind) = match sent {
                Ok(Ok(response)) => {
                    if response.status() == StatusCode::SERVICE_UNAVAILABLE
                        && pool.retry_on_503
                        && may_retry
                        && replayable
                    {
                        let failed =
                            failed_try(&tried, idempotent, FailureKind::ServerError, true, false);
                        if let Some((next, backoff)) = self.retry(&mut tried, &backend, &failed) {
                            tracing::debug!(backend = %backend.address, "503: retrying on another backend");
                            guard.finish(End::Failed(FailureKind::ServerError), 0);
                            drop(response);
                            (guard, backend) = next;
                            tokio::time::sleep_until(
                                (tokio::time::Instant::now() + backoff).min(deadline),
                            )
                            .await;
                            continue;
                        }
                    }
                    self.attach(&mut guard, &mut record, &mut trace, &backend, try_started);
                    return backend_response(response, guard, self.via, self.request_id);
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
            let time_left = deadline > tokio::time::Instant::now();
            if may_retry && time_left {
                // A streamed body went to hyper with the try: it cannot be sent again.
                let failed = failed_try(&tried, idempotent, kind, false, !replayable);
                if let Some((next, backoff)) = self.retry(&mut tried, &backend, &failed) {
                    tracing::debug!(backend = %backend.address, %error, "retrying on another backend");
                    guard.finish(End::Failed(kind), 0);
                    (guard, backend) = next;
                    tokio::time::sleep_until((tokio::time::Instant::now() + backoff).min(deadline))
                        .await;
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

    /// Asks the core whether to retry; if so, dispatches the retry (never to a backend already
    /// tried) and returns it with the backoff to wait first.
    fn retry(
        &self,
        tried: &mut Vec<BackendId>,
        failed_backend: &Arc<Backend>,
        failed: &FailedTry,
    ) -> Option<((DoneGuard, Arc<Backend>), Duration)> {
        let RetryDecision::Retry { backoff } = self.pool.decide_retry(failed) else {
            return None;
        };
        tried.push(failed_backend.id);
        let dispatched = match &self.proxy.explain {
            None => self.pool.handle_retry_work(tried),
            Some(ring) => {
                let (dispatched, record) = self.pool.handle_retry_work_explained(tried);
                ring.push(self.request_id.as_bytes(), self.pool.explain_key, record);
                dispatched
            }
        };
        let (token, backend) = dispatched.ok()?;
        let guard = DoneGuard::dispatched(self.pool.clone(), token, self.started);
        Some(((guard, backend), backoff))
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
            (self.proxy.access_log, r)
        });
        guard.attach(
            record,
            self.proxy
                .labels(Some(self.route_label), Some(&backend.label)),
        );
    }
}

/// What the core needs to decide on a failed try.
fn failed_try(
    tried: &[BackendId],
    idempotent: bool,
    failure: FailureKind,
    status_503: bool,
    body_consumed: bool,
) -> FailedTry {
    FailedTry {
        retries_so_far: tried.len() as u32,
        idempotent,
        failure,
        status_503,
        // Tries fail before any of the response is passed on: the response is handed to the
        // client only once a try has succeeded or is the last.
        response_started: false,
        body_consumed,
    }
}

fn reject_error(reason: RejectReason, pool: &Pool) -> ProxyError {
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
enum Upstreamed {
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
fn backend_response(
    response: Response<Upstreamed>,
    mut guard: DoneGuard,
    via: &HeaderValue,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    guard.set_status(parts.status);
    let body = match body {
        Upstreamed::Hyper(body) => {
            headers::strip_hop_by_hop(&mut parts.headers, false);
            add_response_headers(&mut parts.headers, via, request_id);
            ProxyBody::backend(body, guard)
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
            ProxyBody::upstream(body, guard)
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
fn backend_uri(backend: &Backend, uri: &Uri) -> Result<Uri, ProxyError> {
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

fn open_trace(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<TraceSink>>, PoolError> {
    config
        .trace
        .as_ref()
        .map(|trace| {
            TraceSink::start(trace, metrics.clone()).map_err(|source| PoolError::Trace {
                path: trace.path.display().to_string(),
                source,
            })
        })
        .transpose()
}
