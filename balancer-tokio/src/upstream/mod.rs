//! The connection layer: backends as addresses, keep-alive connections to them, HTTP/1.1
//! written and read in the request's own task, and hyper's client for streamed uploads. It
//! knows nothing of scheduling: which backend to use is decided above it.

pub mod body;
pub mod client;
pub mod h1;
pub mod peer;

pub use body::{MAX_REPLAY_BODY_BYTES, RequestBody, RequestBodyError};
pub use client::{BackendClient, backend_clients};
pub use h1::{
    HeadForm, HeadLines, Upstream, UpstreamBody, UpstreamError, UpstreamSettings, write_request,
};
pub use peer::{Backend, socket_addr};
