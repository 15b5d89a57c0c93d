//! The body of every response the proxy sends, carrying the try's done guard: its end, error
//! or drop reports the done.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use balancer_core::FailureKind;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::balance::done::{DoneGuard, End};
use crate::upstream::{HeadLines, UpstreamBody};

enum Source {
    Backend(Incoming),
    /// Read by the request's own task from a kept-alive backend connection (`upstream::h1`).
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// The body of every response the proxy sends: streamed from a backend or made locally,
/// with the done guard that fires when it ends.
pub struct ProxyBody {
    source: Source,
    guard: Option<DoneGuard>,
    sent_bytes: u64,
    idle: Idle,
}

/// The bound on a backend's silence within its body: a timer made at the first wait (a body
/// that never makes its reader wait costs none), started at each wait after a frame.
struct Idle {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    running: bool,
}

impl Idle {
    const NONE: Idle = Idle {
        timeout: Duration::MAX,
        timer: None,
        running: false,
    };

    fn new(timeout: Duration) -> Idle {
        Idle {
            timeout,
            ..Idle::NONE
        }
    }

    /// After the source said Pending: whether the backend has now been silent too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.running {
            // A timeout too large for the clock is no bound at all.
            let Some(deadline) = tokio::time::Instant::now().checked_add(self.timeout) else {
                return false;
            };
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.running = true;
        }
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }
}

/// A backend sent no byte of its response body for `timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the backend sent nothing of its response body for {timeout_ms} ms")]
pub struct BodyIdle {
    timeout_ms: u64,
}

impl ProxyBody {
    /// A backend's body, streamed through; cut after `idle_timeout` without a byte.
    pub fn backend(body: Incoming, guard: DoneGuard, idle_timeout: Duration) -> Self {
        ProxyBody {
            source: Source::Backend(body),
            guard: Some(guard),
            sent_bytes: 0,
            idle: Idle::new(idle_timeout),
        }
    }

    /// A backend's body read by [`crate::upstream`], streamed through; cut after
    /// `idle_timeout` without a byte.
    pub fn upstream(body: UpstreamBody, guard: DoneGuard, idle_timeout: Duration) -> Self {
        ProxyBody {
            source: Source::Upstream(body),
            guard: Some(guard),
            sent_bytes: 0,
            idle: Idle::new(idle_timeout),
        }
    }

    /// A body made by the proxy (error pages, 101 for tunnels).
    pub fn full(bytes: Bytes, guard: Option<DoneGuard>) -> Self {
        ProxyBody {
            source: Source::Full((!bytes.is_empty()).then_some(bytes)),
            guard,
            sent_bytes: 0,
            idle: Idle::NONE,
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
        let polled = match &mut this.source {
            Source::Backend(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Source::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if polled.is_pending() && this.idle.expired(cx) {
            this.finish(End::Failed(FailureKind::Timeout));
            let timeout_ms = u64::try_from(this.idle.timeout.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(timeout_ms, "backend stalled in a response body; cutting it");
            return Poll::Ready(Some(Err(BodyIdle { timeout_ms }.into())));
        }
        let polled: Option<Result<Frame<Bytes>, ProxyBodyError>> = ready!(polled);
        this.idle.running = false;
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
