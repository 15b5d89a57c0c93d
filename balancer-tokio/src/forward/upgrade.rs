//! Protocol switches (WebSocket): a dedicated backend connection, then a byte tunnel.

use std::time::Instant;

use balancer_core::FailureKind;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::balance::done::{DoneGuard, End};
use crate::balance::pool::SharedPool;
use crate::forward::body::ProxyBody;
use crate::http::errors::ProxyError;
use crate::http::headers;
use crate::runtime::shutdown::DrainGuard;
use crate::upstream::Backend;

use super::proxy::Proxy;
use super::tries::{Upstreamed, backend_response};

impl Proxy {
    /// Protocol switch (WebSocket): a dedicated backend connection, then a byte tunnel.
    /// Done is reported when the tunnel closes, so a long WebSocket counts as pending.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward_upgrade<B>(
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
            return backend_response(
                response.map(Upstreamed::Hyper),
                guard,
                via,
                request_id,
                pool.response_body_idle_timeout,
            );
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
}
