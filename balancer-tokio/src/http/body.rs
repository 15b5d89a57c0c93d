//! The client's request body as the proxy receives it.

use hyper::body::Incoming;

/// A client's request body as the proxy receives it.
pub enum ClientBody {
    /// Read by hyper's server (requests the plain HTTP/1.1 path hands over, and HTTP/2).
    Hyper(Incoming),
    /// No body: a plain request parsed by the server's own HTTP/1.1 code, which takes only
    /// bodiless requests. That code writes the response itself, so the backend's headers may
    /// come as wire-ready lines in the response body instead of in its map.
    Empty,
}
