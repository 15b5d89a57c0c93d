//! The demo backend: a small HTTP server that says which instance answered, with endpoints
//! for tests and load tests (latency, streaming, echo, status codes, WebSocket echo).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::runtime::shutdown::{Phase, Shutdown};

/// Largest chunk `/stream` sends at once; keeps one chunk's memory small.
pub const MAX_STREAM_CHUNK_BYTES: usize = 1 << 20;
/// Default chunk size of `/stream`.
pub const DEFAULT_STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// How a demo backend behaves.
#[derive(Clone, Copy, Debug)]
pub struct DemoBackendConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The number in `Hello from #N`.
    pub id: u32,
    /// Added before every response, in milliseconds.
    pub latency_ms: u64,
    /// Uniform random extra in `0..=jitter_ms`, in milliseconds.
    pub jitter_ms: u64,
}

/// A running demo backend.
pub struct DemoBackend {
    address: SocketAddr,
    served: Arc<AtomicU64>,
    shutdown: Shutdown,
    task: JoinHandle<()>,
}

impl DemoBackend {
    /// Binds and starts serving.
    pub async fn start(config: DemoBackendConfig) -> std::io::Result<DemoBackend> {
        let listener = TcpListener::bind(config.listen).await.map_err(|err| {
            let reason = if err.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "port {} is already in use by another program; stop it or choose another port",
                    config.listen.port()
                )
            } else {
                err.to_string()
            };
            std::io::Error::new(
                err.kind(),
                format!(
                    "demo backend #{} cannot listen on {}: {reason}",
                    config.id, config.listen
                ),
            )
        })?;
        let address = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let shutdown = Shutdown::new();
        let mut watcher = shutdown.watcher();
        let state = Arc::new(State {
            config,
            served: served.clone(),
        });
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let mut connection_id: u64 = 0;
            loop {
                let (stream, _) = tokio::select! {
                    _ = watcher.reached(Phase::Draining) => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                connection_id += 1;
                let state = state.clone();
                let builder = builder.clone();
                let mut watcher = watcher.clone();
                // Each connection gets its own jitter RNG, seeded from the id and connection number.
                let rng = Arc::new(std::sync::Mutex::new(ChaCha8Rng::seed_from_u64(
                    (u64::from(config.id) << 32) ^ connection_id,
                )));
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        let rng = rng.clone();
                        async move { Ok::<_, Infallible>(state.handle(request, &rng).await) }
                    });
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = watcher.reached(Phase::Draining) => {}
                    }
                });
            }
        });
        Ok(DemoBackend {
            address,
            served,
            shutdown,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes connections.
    pub async fn stop(self) {
        self.shutdown.advance(Phase::Draining);
        let _ = self.task.await;
    }
}

struct State {
    config: DemoBackendConfig,
    served: Arc<AtomicU64>,
}

type DemoBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

impl State {
    async fn handle(
        &self,
        request: Request<Incoming>,
        rng: &std::sync::Mutex<ChaCha8Rng>,
    ) -> Response<DemoBody> {
        self.served.fetch_add(1, Ordering::Relaxed);
        let delay_ms = self.config.latency_ms
            + if self.config.jitter_ms > 0 {
                rng.lock()
                    .map(|mut r| r.random_range(0..=self.config.jitter_ms))
                    .unwrap_or(0)
            } else {
                0
            };
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let mut response = match path.as_str() {
            "/stream" => self.stream(&query),
            "/echo" => {
                let body = request.into_body().boxed();
                Response::new(body)
            }
            "/headers" => self.headers(&request),
            "/sink" => self.sink(request).await,
            "/ws" => self.websocket(request),
            p if p.starts_with("/status/") => self.status(&p["/status/".len()..]),
            p if p.starts_with("/sleep/") => {
                let ms = p["/sleep/".len()..].parse::<u64>().unwrap_or(0).min(60_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.text(StatusCode::OK, self.hello())
            }
            _ => self.text(StatusCode::OK, self.hello()),
        };
        if let Ok(value) = HeaderValue::from_str(&self.config.id.to_string()) {
            response.headers_mut().insert("x-backend-id", value);
        }
        response
    }

    fn hello(&self) -> String {
        format!("Hello from #{}\n", self.config.id)
    }

    fn text(&self, status: StatusCode, text: String) -> Response<DemoBody> {
        let mut response = Response::new(full(text));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    fn status(&self, code: &str) -> Response<DemoBody> {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => self.text(
                status,
                format!("status {} from #{}\n", status.as_u16(), self.config.id),
            ),
            None => self.text(
                StatusCode::BAD_REQUEST,
                "use /status/NNN with a status code 100-999\n".into(),
            ),
        }
    }

    fn stream(&self, query: &str) -> Response<DemoBody> {
        let total_bytes = query_value(query, "bytes").unwrap_or(1 << 20);
        let chunk_bytes = query_value(query, "chunk_bytes")
            .map_or(DEFAULT_STREAM_CHUNK_BYTES, |c| c as usize)
            .clamp(1, MAX_STREAM_CHUNK_BYTES);
        let body = GeneratedBody {
            remaining_bytes: total_bytes,
            chunk: Bytes::from(pattern(chunk_bytes)),
        };
        let mut response = Response::new(body.boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        response
    }

    fn headers(&self, request: &Request<Incoming>) -> Response<DemoBody> {
        let mut text = format!(
            "{} {} {:?}\n",
            request.method(),
            request.uri(),
            request.version()
        );
        for (name, value) in request.headers() {
            text.push_str(&format!(
                "{}: {}\n",
                name,
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        self.text(StatusCode::OK, text)
    }

    async fn sink(&self, request: Request<Incoming>) -> Response<DemoBody> {
        let mut body = request.into_body();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return self.text(StatusCode::BAD_REQUEST, "body read failed\n".into()),
            }
        }
        self.text(StatusCode::OK, format!("received {received} bytes\n"))
    }

    fn websocket(&self, mut request: Request<Incoming>) -> Response<DemoBody> {
        let key = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
        let is_upgrade = request.method() == Method::GET
            && request
                .headers()
                .get(header::UPGRADE)
                .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let Some(key) = key.filter(|_| is_upgrade) else {
            return self.text(
                StatusCode::BAD_REQUEST,
                "/ws expects a WebSocket upgrade\n".into(),
            );
        };
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    break;
                }
                if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err()
                {
                    break;
                }
            }
        });
        let mut response = Response::new(full(String::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

fn full(text: String) -> DemoBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

fn query_value(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Printable bytes so that a streamed body is easy to eyeball and cheap to check.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A body of `remaining_bytes`, sent as clones of one chunk: generated, never held whole.
struct GeneratedBody {
    remaining_bytes: u64,
    chunk: Bytes,
}

impl Body for GeneratedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.remaining_bytes == 0 {
            return Poll::Ready(None);
        }
        let n = (this.chunk.len() as u64).min(this.remaining_bytes) as usize;
        this.remaining_bytes -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining_bytes == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining_bytes)
    }
}
