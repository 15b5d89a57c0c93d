//! One client connection: its plain requests served by `h1`, then, at the first other one,
//! the connection handed to hyper's server with the bytes read so far.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::generation::Shared;
use super::h1;
use super::head::{
    Head, declares_too_large_body, head_ready, header_deadline, read_head, read_head_within,
};
use crate::config::Limits;
use crate::forward::proxy::{ConnectionInfo, Proxy};
use crate::http::body::ClientBody;
use crate::http::errors::{ProxyError, raw_response};
use crate::observe::access_log::AccessRecord;
use crate::runtime::shutdown::{DrainGuard, Phase, PhaseWatcher, QuietWait};

/// After an error answered before parsing (408, 431), how long to keep reading and discarding
/// so that closing does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_millis(500);
/// Bytes discarded during that linger, at most.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// A client connection and what serving it needs.
pub(super) struct Connection {
    pub(super) info: ConnectionInfo,
    pub(super) shared: Arc<Shared>,
    pub(super) watcher: PhaseWatcher,
    pub(super) drain: DrainGuard,
}

impl Connection {
    pub(super) async fn serve(mut self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        // The connection's limits come from the config in force when it was accepted; each
        // request is served by the config in force when it arrives.
        let generation = self.shared.generation();
        let proxy = &generation.proxy;
        let limits = proxy.limits();
        let started = Instant::now();
        let mut buffer = BytesMut::new();
        let Some(first) = self.next_head(&mut stream, &mut buffer, limits).await else {
            return;
        };
        if !self
            .answer_unreadable_head(proxy, &mut stream, first, limits, started)
            .await
        {
            return;
        }

        // Plain requests are served by `h1`; hyper takes the connection at the first other
        // one. Boxed: a connection that has not sent its first head yet should not carry the
        // state of serving one.
        let served = Box::pin(async {
            let mut stopped_watcher = self.watcher.clone();
            let stopped = std::pin::pin!(stopped_watcher.reached(Phase::Stopped));
            let stopped = self.watcher.clone().quiet(stopped);
            tokio::select! {
                biased;
                served = self.serve_plain(&mut stream, &mut buffer, limits) => Some(served),
                () = stopped => None,
            }
        })
        .await;
        let Some(served) = served else { return };
        if served == Plain::Closed {
            let _ = stream.shutdown().await;
            return;
        }
        if declares_too_large_body(&buffer, limits.max_body_bytes) {
            let message = ProxyError::BodyTooLarge {
                limit_bytes: limits.max_body_bytes,
            }
            .to_string();
            let status = StatusCode::PAYLOAD_TOO_LARGE;
            self.answer_raw(proxy, &mut stream, status, &message, Instant::now())
                .await;
            return;
        }

        let io = TokioIo::new(Prefixed {
            prefix: buffer.freeze(),
            stream,
        });
        let shared = self.shared.clone();
        let info = self.info;
        let drain = self.drain.clone();
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            shared
                .current()
                .handle(request.map(ClientBody::Hyper), info, drain.clone())
        });
        // Boxed: hyper's connection state is most of this task's 10.7 KiB, and a connection
        // that has not sent its first head yet should not carry it.
        let mut connection = Box::pin(
            generation
                .builder
                .serve_connection_with_upgrades(io, service),
        );
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(client = %info.client, %err, "connection ended with an error");
                }
                return;
            }
            _ = self.watcher.reached(Phase::Draining) => connection.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = self.watcher.reached(Phase::Stopped) => {}
        }
    }

    /// Serves plain requests (`h1`) from the front of `buffer`, which holds a complete head,
    /// for as long as they come; returns `HandOver` with the first other request at the front
    /// of `buffer`.
    async fn serve_plain(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
    ) -> Plain {
        let mut out = Vec::new();
        // Made once per connection rather than per request: a timer registered and dropped
        // and a shutdown waiter queued and unqueued for every head cost about 2,000
        // instructions of each small GET. A timer moved later is only updated in place.
        let mut draining_watcher = self.watcher.clone();
        let draining = std::pin::pin!(draining_watcher.reached(Phase::Draining));
        let mut waits = HeadWaits {
            timer: None,
            draining: self.watcher.clone().quiet(draining),
            drained: false,
        };
        let mut served = 0u64;
        loop {
            let (request, close) = match h1::parse(buffer) {
                h1::Head::Plain { request, close } => (request, close),
                // Only a connection's first bytes choose its protocol: HTTP/2's preface after
                // HTTP/1.1 requests is refused, as HAProxy and nginx do, not taken as h2c.
                h1::Head::Other if served > 0 && buffer.starts_with(H2_PREFACE) => {
                    let proxy = self.shared.current();
                    let message = "an HTTP/2 preface after HTTP/1.1 requests on one connection";
                    let status = StatusCode::BAD_REQUEST;
                    self.answer_raw(&proxy, stream, status, message, Instant::now())
                        .await;
                    return Plain::Closed;
                }
                h1::Head::Other => return Plain::HandOver,
                h1::Head::Malformed => {
                    let proxy = self.shared.current();
                    let message = "malformed request: the request target or a header is invalid";
                    let status = StatusCode::BAD_REQUEST;
                    self.answer_raw(&proxy, stream, status, message, Instant::now())
                        .await;
                    return Plain::Closed;
                }
            };
            served += 1;
            let head_request = request.method() == http::Method::HEAD;
            let response = self
                .shared
                .current()
                .handle(request, self.info, self.drain.clone())
                .await
                .unwrap_or_else(|never| match never {});
            // Draining: this response is the connection's last, and says so.
            let close = close || self.watcher.is_at(Phase::Draining);
            match h1::write_response(stream, &mut out, response, head_request, close).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Plain::Closed,
            }
            if head_ready(buffer) {
                continue;
            }
            let started = Instant::now();
            let Some(next) = self
                .next_plain_head(stream, buffer, limits, &mut waits)
                .await
            else {
                return Plain::Closed;
            };
            let proxy = self.shared.current();
            // An idle keep-alive connection that times out is closed without a word, as hyper
            // does; one in the middle of a head gets its 408.
            if matches!(next, Head::TimedOut) && buffer.is_empty() {
                return Plain::Closed;
            }
            if !self
                .answer_unreadable_head(&proxy, stream, next, limits, started)
                .await
            {
                return Plain::Closed;
            }
        }
    }

    /// Reads the next request head, or `None` once draining has begun with no request on its
    /// way. A request the client sent before it could know (bytes already read, or waiting in
    /// the socket) is still read, and the response to it closes the connection
    /// (`serve_plain` sees the phase): closing instead would fail a request no backend saw.
    async fn next_head(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
    ) -> Option<Head> {
        tokio::select! {
            biased;
            _ = self.watcher.reached(Phase::Draining) => {}
            head = read_head(stream, buffer, limits) => return Some(head),
        }
        self.head_on_its_way(stream, buffer, limits).await
    }

    /// [`Connection::next_head`] for the heads after the first, with the connection's own timer
    /// and shutdown waiter.
    async fn next_plain_head<D: Future<Output = ()>>(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
        waits: &mut HeadWaits<'_, D>,
    ) -> Option<Head> {
        if !waits.drained {
            let deadline = header_deadline(limits);
            let timer = match &mut waits.timer {
                Some(timer) => {
                    timer.as_mut().reset(deadline);
                    timer
                }
                None => waits
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            tokio::select! {
                biased;
                () = &mut waits.draining => waits.drained = true,
                head = read_head_within(stream, buffer, limits, timer.as_mut()) => return Some(head),
            }
        }
        self.head_on_its_way(stream, buffer, limits).await
    }

    /// Draining has begun: reads a request the client sent before it could know, or `None`.
    async fn head_on_its_way(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
    ) -> Option<Head> {
        // tokio learns of bytes that arrived only when it next polls for I/O events, which a
        // yield lets it do first; until then `try_read_buf` would say there is nothing.
        tokio::task::yield_now().await;
        let on_its_way =
            !buffer.is_empty() || matches!(stream.try_read_buf(buffer), Ok(n) if n > 0);
        if on_its_way {
            Some(read_head(stream, buffer, limits).await)
        } else {
            None
        }
    }

    /// Answers a head that could not be read (408, 431, 400) and returns false; true if it was.
    async fn answer_unreadable_head(
        &self,
        proxy: &Proxy,
        stream: &mut TcpStream,
        head: Head,
        limits: Limits,
        started: Instant,
    ) -> bool {
        let (status, message) = match head {
            Head::Ready => return true,
            Head::Closed => return false,
            Head::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request headers not received within {} ms",
                    limits.header_read_timeout_ms
                ),
            ),
            Head::Incomplete => (
                StatusCode::BAD_REQUEST,
                "malformed request: the client stopped sending before the end of the headers"
                    .to_owned(),
            ),
            Head::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers are larger than the limit of {} bytes",
                    limits.max_header_bytes
                ),
            ),
        };
        self.answer_raw(proxy, stream, status, &message, started)
            .await;
        false
    }

    /// Answers an error found before hyper saw the request, then closes politely.
    async fn answer_raw(
        &self,
        proxy: &Proxy,
        stream: &mut TcpStream,
        status: StatusCode,
        message: &str,
        started: Instant,
    ) {
        let response = raw_response(status, message);
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(&response).await?;
            stream.shutdown().await?;
            // On the heap: an array here would sit in every connection task's state (8 KiB
            // of each idle connection), not only in the rare ones that get here.
            let mut sink = vec![0u8; 8192];
            let mut discarded = 0;
            while discarded < LINGER_MAX_BYTES {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => discarded += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
        let log = proxy.access_log();
        if log.enabled() {
            log.write(Box::new(AccessRecord {
                request_id: "-".into(),
                client: self.info.client,
                method: "-".into(),
                host: "-".into(),
                path: "-".into(),
                route: "-".into(),
                backend: "-".into(),
                status: status.as_u16(),
                bytes: (message.len() + 1) as u64,
                duration: started.elapsed(),
                outcome: "rejected",
            }));
        }
    }
}

/// The first line of HTTP/2's connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How the plain path ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plain {
    /// The connection is done.
    Closed,
    /// The request at the front of the buffer is hyper's to serve, and so is the rest.
    HandOver,
}

/// What waiting for a plain connection's next head needs, made once per connection.
struct HeadWaits<'a, D> {
    /// The header timeout's timer, made at the second head (most connections in the load
    /// harness's idle test never send a first).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Ready once draining has begun; not polled again after (`drained`).
    draining: QuietWait<'a, D>,
    drained: bool,
}

/// The client stream with the bytes already read in front of it.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
