//! The errors the proxy answers itself, each with its status and a short plain-text body.

use bytes::Bytes;
use http::StatusCode;

/// Why the proxy answered instead of a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request.
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute {
        /// The request's host.
        host: String,
        /// The request's path.
        path: String,
    },
    /// The pool has no backend that takes work.
    #[error("no eligible backend in pool {pool:?}")]
    NoBackend {
        /// The pool.
        pool: String,
    },
    /// The pool's in-flight limit is reached.
    #[error("pool {pool:?} is overloaded; retry later")]
    Overloaded {
        /// The pool.
        pool: String,
    },
    /// The backend refused the connection or could not be reached.
    #[error("backend {backend} refused the connection")]
    Connect {
        /// The backend address.
        backend: String,
    },
    /// The backend closed or reset the connection before answering.
    #[error("backend {backend} closed the connection before answering")]
    Reset {
        /// The backend address.
        backend: String,
    },
    /// The backend's response head is not valid HTTP/1.x.
    #[error("backend {backend} sent an invalid response: {reason}")]
    InvalidResponse {
        /// The backend address.
        backend: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The backend did not accept the connection in time.
    #[error("backend {backend} did not accept the connection within {timeout_ms} ms")]
    ConnectTimeout {
        /// The backend address.
        backend: String,
        /// The timeout that fired.
        timeout_ms: u64,
    },
    /// The backend did not answer with headers in time.
    #[error("backend {backend} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The backend address.
        backend: String,
        /// The timeout that fired.
        timeout_ms: u64,
    },
    /// The request body is over `max_body_bytes`.
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit_bytes: u64,
    },
    /// A rate limit refused the request.
    #[error("too many requests ({limit} limit); retry in {retry_after_s} s")]
    RateLimited {
        /// Which limit: `global`, `client` or `route`.
        limit: &'static str,
        /// Seconds until a request would pass (also sent as `Retry-After`).
        retry_after_s: u64,
    },
    /// The client's request could not be forwarded as sent.
    #[error("malformed request: {reason}")]
    BadRequest {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The client stopped sending its request body.
    #[error("request body: nothing received for {timeout_ms} ms")]
    BodyTimeout {
        /// `body_read_timeout_ms`.
        timeout_ms: u64,
    },
    /// The request uses something this proxy does not carry (RFC 9110 §15.6.2).
    #[error("not implemented: {what}")]
    NotImplemented {
        /// What.
        what: &'static str,
    },
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoBackend { .. } | ProxyError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. }
            | ProxyError::Reset { .. }
            | ProxyError::InvalidResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } | ProxyError::ConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The plain-text body: the message and a newline.
    pub fn body(&self) -> Bytes {
        Bytes::from(format!("{self}\n"))
    }
}

/// A complete HTTP/1.1 response for errors found before hyper parsed a request (408, 431).
pub fn raw_response(status: StatusCode, message: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        message.len() + 1,
        message
    )
    .into_bytes()
}
