//! Forwarding one request: route it, check its rate limits, ask the pool for a backend, send
//! it (retrying where the core says so), and hand the response body back to the server.

pub mod body;
mod phases;
pub(crate) use phases::{check_framing, check_host};
pub mod proxy;
pub mod ratelimit;
pub mod routing;
mod tries;
mod upgrade;
