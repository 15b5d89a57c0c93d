//! The body sent to a backend: the client's, streamed with its size limit, or a small one held
//! in memory so that a retry can send it again.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

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
