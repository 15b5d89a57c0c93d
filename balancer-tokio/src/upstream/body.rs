//! The body sent to a backend: the client's, streamed with its size limit, or a small one held
//! in memory so that a retry can send it again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client sent more than `max_body_bytes`.
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The client sent nothing for `timeout_ms`.
    #[error("the client sent no request body bytes for {timeout_ms} ms")]
    Idle {
        /// `body_read_timeout_ms`.
        timeout_ms: u64,
    },
    /// Reading from the client failed (it went away, or sent a malformed chunk).
    #[error("reading the request body from the client failed: {0}")]
    Client(#[source] hyper::Error),
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

/// The client's body with its size limit and its idle timeout.
pub struct StreamBody {
    inner: Incoming,
    limit_bytes: u64,
    remaining_bytes: u64,
    idle_timeout: Duration,
    /// Started at the first wait, moved on by each frame. Boxed: only streamed uploads have one.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RequestBody {
    /// Wraps `inner`, allowing at most `limit_bytes` and at most `idle_timeout` between frames.
    pub fn new(inner: Incoming, limit_bytes: u64, idle_timeout: Duration) -> Self {
        RequestBody::Stream(StreamBody {
            inner,
            limit_bytes,
            remaining_bytes: limit_bytes,
            idle_timeout,
            idle: None,
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            let idle_timeout = this.idle_timeout;
            let idle = this
                .idle
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
            ready!(idle.as_mut().poll(cx));
            return Poll::Ready(Some(Err(RequestBodyError::Idle {
                timeout_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            })));
        }
        if let Some(idle) = &mut this.idle {
            idle.as_mut()
                .reset(tokio::time::Instant::now() + this.idle_timeout);
        }
        match ready!(polled) {
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
