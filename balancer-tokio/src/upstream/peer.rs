//! A backend as the connection layer knows it: the core's id and its address in the forms a
//! connection needs.

use std::net::SocketAddr;
use std::sync::Arc;

use balancer_core::BackendId;

/// One backend's address in the forms the proxy needs.
#[derive(Debug)]
pub struct Backend {
    /// The core's id for it.
    pub id: BackendId,
    /// `host:port` as configured.
    pub address: String,
    /// The same, shared, as a metrics label.
    pub label: Arc<String>,
    /// The same, parsed as an URI authority for request URIs.
    pub authority: http::uri::Authority,
    /// The same as a socket address when it is an IP address (a name is resolved per connect).
    pub socket_addr: Option<std::net::SocketAddr>,
}

/// A backend's address, when it is an IP address and port (no name to resolve per connect).
pub fn socket_addr(address: &str) -> Option<SocketAddr> {
    address.parse().ok()
}
