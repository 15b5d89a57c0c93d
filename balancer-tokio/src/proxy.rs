//! Forwarding one request: route, ask the core, send to the backend, stream the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use balancer_core::{Decision, FailureKind, RejectReason};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::access_log::{AccessLog, AccessRecord};
use crate::body::{DoneGuard, End, ProxyBody, RequestBody, RequestBodyError};
use crate::config::{Config, Limits};
use crate::errors::ProxyError;
use crate::headers;
use crate::pool::{Backend, Clock, Pool, PoolError, SharedPool};
use crate::routing::RouteTable;
use crate::shutdown::DrainGuard;

/// Where a request came in.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// The port of the listener that accepted it.
    pub listener_port: u16,
}

/// Everything needed to serve requests; shared by all connections.
pub struct Proxy {
    routes: RouteTable,
    pools: Vec<SharedPool>,
    limits: Limits,
    access_log: AccessLog,
    via_http1: HeaderValue,
    via_http2: HeaderValue,
}

impl Proxy {
    /// Builds the routing table and one pool (scheduler + client) per configured pool.
    pub fn new(config: &Config) -> Result<Proxy, PoolError> {
        let clock = Clock::new();
        let pools = config
            .pools
            .iter()
            .map(|p| Pool::new(p, clock).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Proxy {
            routes: RouteTable::new(&config.routes),
            pools,
            limits: config.limits,
            access_log: AccessLog::new(config.access_log),
            via_http1: HeaderValue::from_static("1.1 balancer"),
            via_http2: HeaderValue::from_static("2.0 balancer"),
        })
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

    /// Serves one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        connection: ConnectionInfo,
        drain: DrainGuard,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible> {
        let started = Instant::now();
        let request_id = headers::request_id(request.headers());
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.to_string()));
        let mut record = self.access_log.enabled().then(|| AccessRecord {
            request_id: request_id.to_str().unwrap_or("-").to_owned(),
            client: connection.client,
            method: request.method().to_string(),
            host: host.clone().unwrap_or_else(|| "-".into()),
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
        });
        let via = if request.version() == Version::HTTP_2 {
            &self.via_http2
        } else {
            &self.via_http1
        };

        let Some(route) = self.routes.find(
            host.as_deref(),
            request.uri().path(),
            connection.listener_port,
        ) else {
            let error = ProxyError::NoRoute {
                host: host.unwrap_or_default(),
                path: request.uri().path().to_owned(),
            };
            return Ok(self.local_error(error, request_id, record, started));
        };
        if let Some(record) = &mut record {
            record.route.clone_from(&route.name);
        }
        let pool = &self.pools[route.pool];

        // Refuse a declared oversize body before taking a backend's time; a chunked one is cut
        // off while streaming by `RequestBody`.
        let declared_bytes = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_bytes.is_some_and(|n| n > self.limits.max_body_bytes) {
            let error = ProxyError::BodyTooLarge {
                limit_bytes: self.limits.max_body_bytes,
            };
            return Ok(self.local_error(error, request_id, record, started));
        }

        let (request_token, backend) = match pool.handle_work() {
            Decision::Dispatch { request, backend } => match pool.backend(backend) {
                Some(b) => (request, b),
                None => {
                    // The core named a backend the proxy does not know: impossible while the
                    // backend set is fixed at start; report the done so the counts stay exact.
                    pool.handle_done(request, balancer_core::Outcome::Cancelled);
                    let error = ProxyError::NoBackend {
                        pool: pool.name.clone(),
                    };
                    return Ok(self.local_error(error, request_id, record, started));
                }
            },
            Decision::Reject { reason } => {
                let error = match reason {
                    RejectReason::NoBackend => ProxyError::NoBackend {
                        pool: pool.name.clone(),
                    },
                    RejectReason::Overloaded => ProxyError::Overloaded {
                        pool: pool.name.clone(),
                    },
                };
                return Ok(self.local_error(error, request_id, record, started));
            }
        };
        if let Some(record) = &mut record {
            record.backend.clone_from(&backend.address);
        }
        // From here on the guard owns the done: every path below reports it exactly once.
        let guard = DoneGuard::dispatched(
            pool.clone(),
            request_token,
            record.map(|r| (self.access_log, r)),
            started,
        );

        let upgrade =
            request.version() == Version::HTTP_11 && headers::is_upgrade_request(request.headers());
        // Prepare the request for the backend: origin URI on the backend, HTTP/1.1, headers.
        let uri = match backend_uri(backend, request.uri()) {
            Ok(uri) => uri,
            Err(error) => return Ok(self.fail(guard, End::Cancelled, error, request_id, started)),
        };
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        let client_ip = connection.client.ip();
        {
            let headers_mut = request.headers_mut();
            headers::strip_hop_by_hop(headers_mut, upgrade);
            headers::add_forwarding(headers_mut, client_ip, host.as_deref(), via);
            headers_mut.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
            if !headers_mut.contains_key(header::HOST) {
                // An HTTP/2 client sends :authority instead; HTTP/1.1 backends need Host.
                if let Some(value) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                    headers_mut.insert(header::HOST, value);
                }
            }
        }

        if upgrade {
            return Ok(self
                .forward_upgrade(request, pool, backend, guard, started, request_id, drain)
                .await);
        }

        let (parts, body) = request.into_parts();
        let request =
            Request::from_parts(parts, RequestBody::new(body, self.limits.max_body_bytes));
        let sent =
            tokio::time::timeout(pool.response_header_timeout, pool.client.request(request)).await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                tracing::debug!(backend = %backend.address, error = %err, "forwarding failed");
                let (error, end) = classify_client_error(&err, backend, pool, self.limits);
                return Ok(self.fail(guard, end, error, request_id, started));
            }
            Err(_elapsed) => {
                let error = ProxyError::Timeout {
                    backend: backend.address.clone(),
                    timeout_ms: pool.response_header_timeout.as_millis() as u64,
                };
                return Ok(self.fail(
                    guard,
                    End::Failed(FailureKind::Timeout),
                    error,
                    request_id,
                    started,
                ));
            }
        };
        Ok(backend_response(response, guard, via, request_id))
    }

    /// Protocol switch (WebSocket): a dedicated backend connection, then a byte tunnel.
    /// Done is reported when the tunnel closes, so a long WebSocket counts as pending.
    #[allow(clippy::too_many_arguments)]
    async fn forward_upgrade(
        &self,
        mut request: Request<Incoming>,
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
            return backend_response(response, guard, via, request_id);
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
        self.local_error(error, request_id, None, started)
    }

    fn local_error(
        &self,
        error: ProxyError,
        request_id: HeaderValue,
        mut record: Option<AccessRecord>,
        started: Instant,
    ) -> Response<ProxyBody> {
        let status = error.status();
        if let Some(record) = &mut record {
            record.status = status.as_u16();
        }
        let guard = DoneGuard::local(record.map(|r| (self.access_log, r)), started);
        let mut response = Response::new(ProxyBody::full(error.body(), Some(guard)));
        *response.status_mut() = status;
        let headers_mut = response.headers_mut();
        headers_mut.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers_mut.insert(headers::X_REQUEST_ID.clone(), request_id);
        response
    }
}

/// The backend's response, made ready for the client; its body carries the done guard.
fn backend_response(
    response: Response<Incoming>,
    mut guard: DoneGuard,
    via: &HeaderValue,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    headers::append_via(&mut parts.headers, via);
    parts
        .headers
        .insert(headers::X_REQUEST_ID.clone(), request_id);
    parts.version = Version::HTTP_11;
    guard.set_status(parts.status);
    Response::from_parts(parts, ProxyBody::backend(body, guard))
}

/// `http://BACKEND/path?query` for the client's request URI.
fn backend_uri(backend: &Backend, uri: &Uri) -> Result<Uri, ProxyError> {
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(backend.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest {
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
