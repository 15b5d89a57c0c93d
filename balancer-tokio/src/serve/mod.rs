//! The server: listeners, client connections, request heads read within their limits, plain
//! HTTP/1.1 by hand and everything else through hyper's server, and the config generation
//! every connection reads. A request, once read, is the forwarding layer's.

pub mod connection;
pub mod generation;
pub mod h1;
pub mod head;
pub mod listen;
pub mod settings;

pub use generation::{ReloadError, Shared};
pub use listen::ServeError;
pub use settings::MAX_H2_STREAMS_PER_CONNECTION;
